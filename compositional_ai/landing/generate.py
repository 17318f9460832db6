"""Build a demo landing folder (layout in `formats`) from the real datasets in `elpv` and `sources`.

The story: a repair service receives photos of damaged solar cells. The first weekly batch is the
workshop archive, whose outcomes come with it; every later batch holds a week of online requests,
and the technicians' outcomes for a week's requests arrive with the following batch. So batch 1's
outcomes.csv has a header and no rows, batch k >= 2 confirms batch k - 1, and the last batch's
requests stay unconfirmed. A declined quote's outcome row has only request_id and
quote_accepted=false: no inspection took place. The true labels (ELPV defect probability and cell
type) appear only in outcomes.csv and in the holdout.

What was said in each chat is not written to the landing folder: `LandingSummary.chat_truth` holds
it (one row per transcript, columns CHAT_TRUTH_COLUMNS) for tests of the chat extractor.

With `inject_faults=True` each build carries one fault of every kind in FAULT_KINDS, spread over
the batches and listed in `LandingSummary.faults`.

Each batch also lands synthetic photos (`landing.synthetic`), about `synthetic_share` of its
photo count, made from the real photos whose technician outcomes arrive in that batch: so a
synthetic photo never precedes its parent's label, and no holdout photo is ever a parent.
`LandingSummary.synthetic` lists them with their parents (SYNTHETIC_TRUTH_COLUMNS).
"""

import dataclasses
import hashlib
import json
import random
import shutil
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl

from compositional_ai.landing.elpv import load_elpv_labels, stratified_holdout, stratified_sample
from compositional_ai.landing.formats import (
    CATALOG_FILE,
    CHATS_FILE,
    CUSTOMERS_FILE,
    HOLDOUT_COLUMNS,
    HOLDOUT_DIR,
    HOLDOUT_LABELS_FILE,
    OUTCOME_COLUMNS,
    OUTCOMES_FILE,
    PHOTOS_DIR,
    READY_MARKER,
    REQUESTS_FILE,
    SYNTHETIC_COLUMNS,
    SYNTHETIC_DIR,
    SYNTHETIC_FILE,
)
from compositional_ai.landing.sources import (
    license_notes,
    load_catalog,
    load_customers,
    load_support_phrases,
)
from compositional_ai.landing.synthetic import GENERATOR_VERSION, synthesize

# One of each, in this order; the order decides which batch each lands in (see _fault_batches).
FAULT_KINDS = (
    "bad_damage_level",  # outcomes.csv: an accepted outcome with damage_level 7
    "duplicate_request",  # requests.jsonl: a request line repeated verbatim right after itself
    "truncated_photo",  # photos/: a requested PNG cut to 40 % of its bytes
    "invalid_json",  # requests.jsonl: a half-written copy of a request line, before the full line
    "unknown_product",  # requests.jsonl: a request for a product id missing from the catalog
    "bad_tenure",  # customers.csv: tenure_months written as "<n> months"
    "naive_timestamp",  # requests.jsonl: submitted_at as local wall time with no UTC offset
)
UNKNOWN_PRODUCT_ID = "P9999"
BAD_DAMAGE_LEVEL = 7
TRUNCATED_SHARE = 0.4

WORKSHOP_SHARE = 0.25
RETURNING_SHARE = 0.15
DECLINE_SHARE = 0.10
# Owners of badly damaged cells accept a repair quote a little more often.
ACCEPT_PROBABILITY = {0: 0.77, 1: 0.82, 2: 0.88, 3: 0.92}
TECHNICIANS = (("TECH-01", 1), ("TECH-02", 0), ("TECH-03", -5), ("TECH-04", 1), ("TECH-05", 2))
# Requests come in with their sender's UTC offset, in hours.
OFFSETS = (0, 1, -5, 2, -8)
OFFSET_WEIGHTS = (0.35, 0.30, 0.20, 0.10, 0.05)
# Requests keep this far from the week's edges, so their local date stays inside the week too.
WEEK_MARGIN = timedelta(hours=9)

# Synthetic photos per batch, as a share of the batch's photos; their own random stream keeps
# the rest of a build the same whatever the share.
SYNTHETIC_SHARE = 0.10
SYNTHETIC_STREAM = 5_318
SYNTHETIC_TRUTH_COLUMNS = (
    "batch_id",
    "photo",
    "sha256",
    "parent_sha256",
    "parent_request_id",
    "parent_batch_id",
    "damage_level",
    "cell_type",
)

CHAT_TRUTH_COLUMNS = (
    "transcript_id",
    "request_id",
    "batch_id",
    "customer_id",
    "damage_level",
    "described_level",
    "support_phrase",
    "name",
    "email",
    "phone",
    "age",
    "partner",
    "dependents",
    "declined",
)
_DECLINABLE = ("email", "phone", "age")

_BOT = {
    "damage": (
        "Hi, I'm the repair assistant. What's wrong with the item in your photo?",
        "Hello! Could you describe the damage you can see?",
        "Thanks for reaching out. What seems to be the problem?",
    ),
    "name": (
        "Thanks. May I have your full name?",
        "Got it. Who am I speaking with?",
        "What name should I put on the request?",
    ),
    "email": (
        "What's the best e-mail address for the quote?",
        "Could you share your e-mail address?",
        "Which e-mail should we send updates to?",
    ),
    "phone": (
        "And a phone number in case the technician needs to call?",
        "What number can we reach you on?",
        "Could I get a contact phone number?",
    ),
    "age": (
        "For our warranty records, may I ask your age?",
        "How old are you, if you don't mind me asking?",
        "Could you tell me your age? Some service plans depend on it.",
    ),
    "household": (
        "Who else lives at the address? It helps us plan a home visit.",
        "Do you live alone or with others?",
        "Who's in your household, if I may ask?",
    ),
    "closing": (
        "Thank you! A technician will review your photo and send a quote soon.",
        "All set. You'll hear from us within two working days.",
        "Thanks, that's everything I need. Have a good day!",
    ),
}
_DAMAGE_DETAILS = {
    0: (
        "Honestly I can't see anything wrong, it just seems to produce less than it used to.",
        "Nothing visible, I'd just like someone to check it.",
        "It looks okay to me, but the output dropped a little this month.",
    ),
    1: (
        "There's a thin line running across one corner.",
        "I can see a small crack near the edge.",
        "A couple of tiny dark spots have appeared.",
    ),
    2: (
        "There's a clear crack and part of it has gone darker.",
        "One section looks noticeably dimmer than the rest, with a crack through it.",
        "A good chunk of it looks grey and there are cracks.",
    ),
    3: (
        "It's badly cracked and a big part of it is completely dark.",
        "Most of it is black now, it looks broken.",
        "It's shattered, about half of it doesn't light up at all.",
    ),
}
_SAY = {
    "name": ("My name is {}.", "It's {}.", "{}", "This is {}.", "{} here."),
    "email": (
        "Sure, it's {}",
        "You can reach me at {}.",
        "{}",
        "My e-mail is {}, thanks.",
        "Please use {}",
    ),
    "phone": (
        "My number is {}.",
        "Call me on {}",
        "{}",
        "You can reach me at {}, afternoons are best.",
        "It's {}.",
    ),
    "age": (
        "I'm {}.",
        "I am {} years old.",
        "{}",
        "I just turned {}.",
        "I'm {} years old, if that matters.",
    ),
}
_DECLINE = (
    "I'd rather not say.",
    "I prefer not to share that.",
    "Can we skip that one?",
    "No thanks, I'll leave that out.",
)
_HOUSEHOLD = {
    (True, True): (
        "I live with my {spouse} and {kids}.",
        "My {spouse} and {kids}.",
        "It's me, my {spouse} and {kids}.",
    ),
    (True, False): ("Just my {spouse} and me.", "My {spouse}.", "I live with my {spouse}."),
    (False, True): (
        "Just me and {kids}.",
        "I'm a single parent, it's me and {kids}.",
        "Me and {kids}.",
    ),
    (False, False): ("Just me.", "I live alone.", "Nobody else, it's only me."),
}
_KIDS = {
    1: ("my son", "my daughter"),
    2: ("my two kids", "my two children"),
    3: ("my three kids", "my three children"),
}
_SPOUSE = {"female": ("husband", "partner", "wife"), "male": ("wife", "partner", "husband")}
_CLOSING_REPLY = ("Thanks!", "Great, thank you.", "Cheers.", None, None)


@dataclass(frozen=True)
class Fault:
    """One injected defect: where it is and what it is."""

    kind: str
    batch_id: str
    file: str  # relative to the batch folder
    request_id: str | None = None
    line: int | None = None  # 1-based line number in `file` (a CSV header is line 1)
    detail: str = ""


@dataclass(frozen=True)
class LandingSummary:
    """What `build_demo_landing` wrote.

    `counts` maps each written data file (relative to the root) to its line or row count, and each
    photo folder to its number of files; `chat_truth` holds what was said in every chat and
    `synthetic` every synthetic photo with its parent.
    """

    root: Path
    batches: tuple[str, ...]
    counts: dict[str, int]
    faults: tuple[Fault, ...]
    licenses: dict[str, str]
    catalog_dropped: int
    chat_truth: pl.DataFrame
    synthetic: pl.DataFrame


@dataclass
class _Request:
    channel: str
    submitted: datetime  # aware, in the sender's offset
    customer: int  # row of the CRM table
    product_id: str
    photo_file: str
    source_path: str
    damage_level: int
    defect_probability: float
    cell_type: str
    request_id: str = ""


@dataclass
class _Batch:
    batch_id: str
    requests: list[_Request] = field(default_factory=list)
    outcomes: list[dict] = field(default_factory=list)
    truncated: dict[str, str] = field(default_factory=dict)  # photo file -> request id
    faults: dict[str, _Request] = field(default_factory=dict)
    bad_outcome: dict | None = None


def _iso(moment: datetime) -> str:
    text = moment.isoformat(timespec="seconds")
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text


def _zone(hours: int) -> timezone:
    return UTC if hours == 0 else timezone(timedelta(hours=hours))


def _moment(rng: np.random.Generator, lo: datetime, hi: datetime, hours: int) -> datetime:
    seconds = int(rng.integers(0, int((hi - lo).total_seconds())))
    return (lo + timedelta(seconds=seconds)).astimezone(_zone(hours))


def _week(start: date, batch: int) -> datetime:
    return datetime.combine(start + timedelta(weeks=batch), time(0), tzinfo=UTC)


def _fault_batches(n_batches: int) -> dict[str, int]:
    last = len(FAULT_KINDS) - 1
    return {kind: round(i * (n_batches - 1) / last) for i, kind in enumerate(FAULT_KINDS)}


def _plan_requests(
    pool: pl.DataFrame,
    customers: pl.DataFrame,
    catalog: pl.DataFrame,
    n_batches: int,
    start: date,
    rng: np.random.Generator,
) -> list[_Batch]:
    shuffled = pool[rng.permutation(pool.height)]
    n_workshop = max(1, round(WORKSHOP_SHARE * pool.height))
    if pool.height - n_workshop < n_batches - 1:
        raise ValueError(f"{pool.height} training photos cannot fill {n_batches} batches")
    parts = [
        np.arange(n_workshop),
        *np.array_split(np.arange(n_workshop, pool.height), n_batches - 1),
    ]
    fresh = iter(rng.permutation(customers.height).tolist())
    product_ids = catalog["product_id"].to_list()
    # Returning customers are drawn from earlier batches only.
    seen: list[int] = []
    known: set[int] = set()
    batches = []
    for b, rows in enumerate(parts):
        batch = _Batch((start + timedelta(weeks=b)).isoformat())
        week = _week(start, b)
        # Workshop requests leave room in the week for their own inspection.
        end = week + (timedelta(days=5) if b == 0 else timedelta(days=7) - WEEK_MARGIN)
        returning = rng.random(rows.size) < RETURNING_SHARE
        hours = rng.choice(OFFSETS, size=rows.size, p=OFFSET_WEIGHTS).tolist()
        products = rng.integers(0, len(product_ids), size=rows.size).tolist()
        for i, photo in enumerate(shuffled[rows].iter_rows(named=True)):
            customer = seen[int(rng.integers(0, len(seen)))] if returning[i] and seen else None
            batch.requests.append(
                _Request(
                    channel="workshop" if b == 0 else "online",
                    submitted=_moment(rng, week + WEEK_MARGIN, end, hours[i]),
                    customer=next(fresh) if customer is None else customer,
                    product_id=product_ids[products[i]],
                    photo_file=photo["photo_file"],
                    source_path=photo["source_path"],
                    damage_level=photo["damage_level"],
                    defect_probability=photo["defect_probability"],
                    cell_type=photo["cell_type"],
                )
            )
        new = dict.fromkeys(r.customer for r in batch.requests if r.customer not in known)
        seen.extend(new)
        known.update(new)
        batch.requests.sort(key=lambda r: (r.submitted, r.photo_file))
        batches.append(batch)
    number = 0
    for batch in batches:
        for request in batch.requests:
            number += 1
            request.request_id = f"R-{number:06d}"
    return batches


def _plan_outcomes(batches: list[_Batch], start: date, rng: np.random.Generator) -> None:
    for b, batch in enumerate(batches):
        if b == 0:
            confirmed, accepted = batch.requests, np.ones(len(batch.requests), dtype=bool)
        elif b >= 2:
            confirmed = batches[b - 1].requests
            levels = np.array([r.damage_level for r in confirmed])
            p = np.array([ACCEPT_PROBABILITY[int(level)] for level in levels])
            accepted = rng.random(len(confirmed)) < p
        else:
            # Nothing is pending here: the workshop archive confirms itself, and the first online
            # week is confirmed by the batch after this one.
            continue
        week = _week(start, b)
        technicians = rng.integers(0, len(TECHNICIANS), size=len(confirmed)).tolist()
        for request, ok, tech in zip(confirmed, accepted.tolist(), technicians, strict=True):
            row = {"request_id": request.request_id, "quote_accepted": ok}
            if ok:
                name, hours = TECHNICIANS[tech]
                if b == 0:
                    lo = request.submitted.astimezone(UTC) + timedelta(hours=2)
                    when = _moment(rng, lo, lo + timedelta(hours=38), hours)
                else:
                    when = _moment(
                        rng, week + WEEK_MARGIN, week + timedelta(days=7) - WEEK_MARGIN, hours
                    )
                row |= {
                    "technician_id": name,
                    "inspected_at": _iso(when),
                    "damage_level": request.damage_level,
                    "defect_probability": request.defect_probability,
                    "cell_type": request.cell_type,
                }
            batch.outcomes.append(row)
        batch.outcomes.sort(key=lambda row: row["request_id"])


def _plan_faults(batches: list[_Batch], rng: np.random.Generator) -> None:
    for kind, b in _fault_batches(len(batches)).items():
        batch = batches[b]
        if kind == "bad_damage_level":
            accepted = [o for o in batch.outcomes if o["quote_accepted"]] or [
                o for o in batches[0].outcomes if o["quote_accepted"]
            ]
            target = accepted[int(rng.integers(0, len(accepted)))]
            owner = batch if any(o is target for o in batch.outcomes) else batches[0]
            owner.bad_outcome = target
            continue
        taken = {id(r) for r in batch.faults.values()}
        free = [r for r in batch.requests if id(r) not in taken] or batch.requests
        batch.faults[kind] = free[int(rng.integers(0, len(free)))]


def _persona(seed: int, customer: dict) -> dict:
    rnd = random.Random(f"persona:{seed}:{customer['customer_id']}")
    age = rnd.randint(65, 89) if customer["senior_citizen"] else rnd.randint(19, 64)
    spouse = rnd.choices(_SPOUSE[customer["gender"]], weights=(0.55, 0.35, 0.10))[0]
    return {"age": age, "spouse": spouse, "kids": rnd.choice(_KIDS[rnd.randint(1, 3)])}


def _transcript(
    request: _Request,
    batch_id: str,
    customer: dict,
    persona: dict,
    phrases: tuple[str, ...],
    seed: int,
) -> tuple[dict, dict]:
    rnd = random.Random(f"chat:{seed}:{request.request_id}")
    level = request.damage_level
    # Customers describe damage loosely: now and then as a neighbouring level.
    if rnd.random() < 0.2:
        level = min(3, max(0, level + rnd.choice((-1, 1))))
    damage = rnd.choice(_DAMAGE_DETAILS[level])
    support = rnd.choice(phrases) if rnd.random() < 0.6 else None
    if support and rnd.random() < 0.5:
        damage = f"{support} {damage}"
    elif support:
        lowered = support if support.startswith("I ") else support[0].lower() + support[1:]
        damage = f"{damage} Also, {lowered}"
    declined = rnd.choice(_DECLINABLE) if rnd.random() < DECLINE_SHARE else None
    said = {
        "name": customer["name"],
        "email": customer["email"],
        "phone": customer["phone"],
        "age": persona["age"],
    }
    household = (customer["partner"], customer["dependents"])
    answers = {
        "damage": damage,
        "household": rnd.choice(_HOUSEHOLD[household]).format(**persona),
        "closing": rnd.choice(_CLOSING_REPLY),
    }
    for slot in ("name", *_DECLINABLE):
        answers[slot] = (
            rnd.choice(_DECLINE) if slot == declined else rnd.choice(_SAY[slot]).format(said[slot])
        )
    moment = request.submitted - timedelta(seconds=rnd.randint(200, 900))
    turns = []
    for slot in _BOT:
        moment += timedelta(seconds=rnd.randint(2, 8))
        turns.append(
            {"speaker": "bot", "text": rnd.choice(_BOT[slot]), "at": _iso(moment), "asks": slot}
        )
        if answers[slot] is not None:
            moment += timedelta(seconds=rnd.randint(5, 70))
            turns.append({"speaker": "customer", "text": answers[slot], "at": _iso(moment)})
    transcript_id = "T-" + request.request_id.removeprefix("R-")
    record = {"transcript_id": transcript_id, "request_id": request.request_id, "turns": turns}
    truth = {
        "transcript_id": transcript_id,
        "request_id": request.request_id,
        "batch_id": batch_id,
        "customer_id": customer["customer_id"],
        "damage_level": request.damage_level,
        "described_level": level,
        "support_phrase": support,
        "name": said["name"],
        "email": None if declined == "email" else said["email"],
        "phone": None if declined == "phone" else said["phone"],
        "age": None if declined == "age" else said["age"],
        "partner": household[0],
        "dependents": household[1],
        "declined": declined,
    }
    return record, truth


def _request_lines(batch: _Batch, crm: list[dict], faults: list[Fault]) -> list[str]:
    lines: list[str] = []
    for request in batch.requests:
        customer = crm[request.customer]
        submitted = _iso(request.submitted)
        product_id = request.product_id
        if batch.faults.get("naive_timestamp") is request:
            submitted = request.submitted.replace(tzinfo=None).isoformat(timespec="seconds")
        if batch.faults.get("unknown_product") is request:
            product_id = UNKNOWN_PRODUCT_ID
        text = json.dumps(
            {
                "request_id": request.request_id,
                "submitted_at": submitted,
                "channel": request.channel,
                "customer_id": customer["customer_id"],
                "product_id": product_id,
                "photo": f"{PHOTOS_DIR}/{request.photo_file}",
                "customer": {k: customer[k] for k in ("name", "email", "phone")},
            },
            ensure_ascii=False,
        )

        def note(kind: str, rid: str = request.request_id, detail: str = "") -> None:
            faults.append(Fault(kind, batch.batch_id, REQUESTS_FILE, rid, len(lines), detail))

        if batch.faults.get("invalid_json") is request:
            lines.append(text[: len(text) // 2])
            note("invalid_json", detail="half of the request's own line, written before it")
        lines.append(text)
        if batch.faults.get("naive_timestamp") is request:
            note("naive_timestamp", detail=f"submitted_at={submitted}")
        if batch.faults.get("unknown_product") is request:
            note("unknown_product", detail=f"product_id={product_id}")
        if batch.faults.get("duplicate_request") is request:
            lines.append(text)
            note("duplicate_request", detail="exact copy of the previous line")
    return lines


def _customers_frame(batch: _Batch, customers: pl.DataFrame, faults: list[Fault]) -> pl.DataFrame:
    rows = sorted({r.customer for r in batch.requests})
    frame = customers[rows].sort("customer_id")
    victim = batch.faults.get("bad_tenure")
    if victim is None:
        return frame
    customer_id = customers["customer_id"][victim.customer]
    position = frame["customer_id"].index_of(customer_id)
    tenure = int(frame["tenure_months"][position])
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == position)
        .then(pl.lit(f"{tenure} months"))
        .otherwise(pl.col("tenure_months").cast(pl.String))
        .alias("tenure_months")
    )
    faults.append(
        Fault(
            "bad_tenure",
            batch.batch_id,
            CUSTOMERS_FILE,
            None,
            position + 2,
            f"customer_id={customer_id} tenure_months={tenure} months",
        )
    )
    return frame


def _outcomes_frame(batch: _Batch, faults: list[Fault]) -> pl.DataFrame:
    schema = {
        "request_id": pl.String,
        "technician_id": pl.String,
        "inspected_at": pl.String,
        "quote_accepted": pl.Boolean,
        "damage_level": pl.Int64,
        "defect_probability": pl.Float64,
        "cell_type": pl.String,
    }
    rows = [dict(row) for row in batch.outcomes]
    for i, row in enumerate(rows):
        if batch.outcomes[i] is batch.bad_outcome:
            row["damage_level"] = BAD_DAMAGE_LEVEL
            faults.append(
                Fault(
                    "bad_damage_level",
                    batch.batch_id,
                    OUTCOMES_FILE,
                    row["request_id"],
                    i + 2,
                    f"damage_level={BAD_DAMAGE_LEVEL}",
                )
            )
    return pl.DataFrame(rows, schema=schema).select(OUTCOME_COLUMNS)


def _text(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode("utf-8")


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _write_reference(
    root: Path, catalog: pl.DataFrame, holdout: pl.DataFrame, counts: dict[str, int]
) -> None:
    staging = root / ".tmp-reference"
    photos = staging / HOLDOUT_DIR / PHOTOS_DIR
    photos.mkdir(parents=True)
    _write(staging / CATALOG_FILE, catalog.write_csv().encode("utf-8"))
    digests = [
        _write(photos / name, Path(source).read_bytes())
        for name, source in zip(holdout["photo_file"], holdout["source_path"], strict=True)
    ]
    labels = holdout.with_columns(pl.Series("sha256", digests)).select(HOLDOUT_COLUMNS)
    _write(staging / HOLDOUT_DIR / HOLDOUT_LABELS_FILE, labels.write_csv().encode("utf-8"))
    staging.rename(root / "reference")
    counts[f"reference/{CATALOG_FILE}"] = catalog.height
    counts[f"reference/{HOLDOUT_DIR}/{HOLDOUT_LABELS_FILE}"] = labels.height
    counts[f"reference/{HOLDOUT_DIR}/{PHOTOS_DIR}"] = len(digests)


def _write_batch(
    batches_dir: Path,
    batch: _Batch,
    files: dict[str, bytes],
    counts: dict[str, int],
    synthetic: dict[str, bytes],
) -> None:
    staging = batches_dir / f".tmp-{batch.batch_id}"
    (staging / PHOTOS_DIR).mkdir(parents=True)
    (staging / SYNTHETIC_DIR).mkdir()
    manifest = {name: _write(staging / name, data) for name, data in files.items()}
    for name, data in synthetic.items():
        manifest[f"{SYNTHETIC_DIR}/{name}"] = _write(staging / SYNTHETIC_DIR / name, data)
    for request in batch.requests:
        data = Path(request.source_path).read_bytes()
        if request.photo_file in batch.truncated:
            data = data[: int(len(data) * TRUNCATED_SHARE)]
        manifest[f"{PHOTOS_DIR}/{request.photo_file}"] = _write(
            staging / PHOTOS_DIR / request.photo_file, data
        )
    rows = {
        name: data.count(b"\n") - (1 if name.endswith(".csv") else 0)
        for name, data in files.items()
    }
    ready = {"batch_id": batch.batch_id, "files": dict(sorted(manifest.items())), "rows": rows}
    (staging / READY_MARKER).write_text(json.dumps(ready, indent=2) + "\n", encoding="utf-8")
    staging.rename(batches_dir / batch.batch_id)
    prefix = f"batches/{batch.batch_id}/"
    counts.update({prefix + name: n for name, n in rows.items()})
    counts[prefix + PHOTOS_DIR] = len(batch.requests)
    counts[prefix + SYNTHETIC_DIR] = len(synthetic)


def _synthetic_parents(
    batches: list[_Batch], share: float, rng: np.random.Generator
) -> list[list[tuple[_Request, int]]]:
    """Per batch, the requests whose photos become synthetic photos there, with their batch.

    Parents are the photos whose technician label arrives in the batch (the outcomes it holds),
    so a synthetic photo never lands before its parent's label. Photos touched by a fault are
    left out: a truncated or quarantined parent would make its children unreadable or orphans.
    """
    owner = {id(r): b for b, batch in enumerate(batches) for r in batch.requests}
    by_id = {r.request_id: r for batch in batches for r in batch.requests}
    faulty = {id(r) for batch in batches for r in batch.faults.values()}
    faulty |= {
        id(by_id[batch.bad_outcome["request_id"]])
        for batch in batches
        if batch.bad_outcome is not None
    }
    chosen = []
    for batch in batches:
        labelled = [
            by_id[row["request_id"]]
            for row in batch.outcomes
            if row["quote_accepted"] and id(by_id[row["request_id"]]) not in faulty
        ]
        n = min(len(labelled), round(share * len(batch.requests)))
        picks = sorted(rng.choice(len(labelled), size=n, replace=False).tolist()) if n else []
        chosen.append([(labelled[i], owner[id(labelled[i])]) for i in picks])
    return chosen


def _synthetic_files(
    batch: _Batch,
    parents: list[tuple[_Request, int]],
    batch_ids: list[str],
    seed: int,
    index: int,
) -> tuple[dict[str, bytes], bytes, list[dict]]:
    """The synthetic photos of one batch, its synthetic.csv, and their truth rows."""
    originals = [Path(request.source_path).read_bytes() for request, _ in parents]
    made = synthesize(originals, seed=[seed, SYNTHETIC_STREAM, index])
    photos, rows, truth = {}, [], []
    for number, ((request, parent_batch), original, photo) in enumerate(
        zip(parents, originals, made, strict=True)
    ):
        name = f"syn-{number:04d}-{request.photo_file}"
        photos[name] = photo.png
        row = {
            "photo": f"{SYNTHETIC_DIR}/{name}",
            "sha256": hashlib.sha256(photo.png).hexdigest(),
            "parent_sha256": hashlib.sha256(original).hexdigest(),
            "synthetic": True,
            "generator_version": GENERATOR_VERSION,
            "transforms": photo.transforms,
        }
        rows.append(row)
        truth.append(
            {
                "batch_id": batch.batch_id,
                "photo": row["photo"],
                "sha256": row["sha256"],
                "parent_sha256": row["parent_sha256"],
                "parent_request_id": request.request_id,
                "parent_batch_id": batch_ids[parent_batch],
                "damage_level": request.damage_level,
                "cell_type": request.cell_type,
            }
        )
    schema = {name: pl.String for name in SYNTHETIC_COLUMNS} | {"synthetic": pl.Boolean}
    manifest = pl.DataFrame(rows, schema=schema).select(SYNTHETIC_COLUMNS)
    return photos, manifest.write_csv().encode("utf-8"), truth


def _build(
    root: Path,
    *,
    n_batches: int,
    seed: int,
    max_train_photos: int | None,
    max_holdout_photos: int | None,
    inject_faults: bool,
    start: date,
    synthetic_share: float,
) -> LandingSummary:
    rng = np.random.default_rng(seed)
    labels = load_elpv_labels()
    in_holdout = stratified_holdout(labels)
    holdout, pool = labels.filter(in_holdout), labels.filter(~in_holdout)
    if max_holdout_photos is not None and max_holdout_photos < holdout.height:
        holdout = holdout.filter(stratified_sample(holdout, max_holdout_photos, seed))
    if max_train_photos is not None and max_train_photos < pool.height:
        pool = pool.filter(stratified_sample(pool, max_train_photos, seed + 1))
    customers = load_customers(seed)
    catalog, dropped = load_catalog()
    phrases = load_support_phrases()

    batches = _plan_requests(pool, customers, catalog, n_batches, start, rng)
    _plan_outcomes(batches, start, rng)
    if inject_faults:
        _plan_faults(batches, rng)
    parents = _synthetic_parents(
        batches, synthetic_share, np.random.default_rng([seed, SYNTHETIC_STREAM])
    )
    batch_ids = [batch.batch_id for batch in batches]
    synthetic_truth: list[dict] = []

    counts: dict[str, int] = {}
    faults: list[Fault] = []
    truth: list[dict] = []
    crm = customers.to_dicts()
    personas: dict[int, dict] = {}
    _write_reference(root, catalog, holdout, counts)
    batches_dir = root / "batches"
    batches_dir.mkdir()
    for index, batch in enumerate(batches):
        chats = []
        for request in batch.requests:
            if request.customer not in personas:
                personas[request.customer] = _persona(seed, crm[request.customer])
            record, said = _transcript(
                request,
                batch.batch_id,
                crm[request.customer],
                personas[request.customer],
                phrases,
                seed,
            )
            chats.append(json.dumps(record, ensure_ascii=False))
            truth.append(said)
        victim = batch.faults.get("truncated_photo")
        if victim is not None:
            batch.truncated[victim.photo_file] = victim.request_id
            faults.append(
                Fault(
                    "truncated_photo",
                    batch.batch_id,
                    f"{PHOTOS_DIR}/{victim.photo_file}",
                    victim.request_id,
                    None,
                    f"first {TRUNCATED_SHARE:.0%} of the PNG bytes",
                )
            )
        files = {
            REQUESTS_FILE: _text(_request_lines(batch, crm, faults)),
            CHATS_FILE: _text(chats),
            CUSTOMERS_FILE: _customers_frame(batch, customers, faults).write_csv().encode(),
            OUTCOMES_FILE: _outcomes_frame(batch, faults).write_csv().encode(),
        }
        synthetic, files[SYNTHETIC_FILE], truth_rows = _synthetic_files(
            batch, parents[index], batch_ids, seed, index
        )
        synthetic_truth.extend(truth_rows)
        _write_batch(batches_dir, batch, files, counts, synthetic)

    order = {kind: i for i, kind in enumerate(FAULT_KINDS)}
    return LandingSummary(
        root=root,
        batches=tuple(b.batch_id for b in batches),
        counts=counts,
        faults=tuple(sorted(faults, key=lambda f: order[f.kind])),
        licenses=license_notes(),
        catalog_dropped=dropped,
        chat_truth=pl.DataFrame(
            truth,
            schema={
                "transcript_id": pl.String,
                "request_id": pl.String,
                "batch_id": pl.String,
                "customer_id": pl.String,
                "damage_level": pl.Int64,
                "described_level": pl.Int64,
                "support_phrase": pl.String,
                "name": pl.String,
                "email": pl.String,
                "phone": pl.String,
                "age": pl.Int64,
                "partner": pl.Boolean,
                "dependents": pl.Boolean,
                "declined": pl.String,
            },
        ).select(CHAT_TRUTH_COLUMNS),
        synthetic=pl.DataFrame(
            synthetic_truth,
            schema={name: pl.String for name in SYNTHETIC_TRUTH_COLUMNS}
            | {"damage_level": pl.Int64},
        ).select(SYNTHETIC_TRUTH_COLUMNS),
    )


def build_demo_landing(
    root: Path,
    *,
    n_batches: int = 9,
    seed: int = 7,
    max_train_photos: int | None = None,
    max_holdout_photos: int | None = None,
    inject_faults: bool = True,
    start: date = date(2026, 1, 5),
    overwrite: bool = False,
    synthetic_share: float = SYNTHETIC_SHARE,
) -> LandingSummary:
    """Write the demo landing folder under `root` and describe what was written.

    A non-empty `root` is refused unless `overwrite`; then the new tree is built in a hidden
    sibling and swapped in by two renames, so readers see the old tree or the new, never a mix.
    Batches and the reference folder are each written under a hidden ".tmp-" name and renamed
    into place, so readers must skip names that start with a dot. `synthetic_share` sizes each
    batch's synthetic photos as a share of its photos; 0 lands none.
    """
    if n_batches < 2:
        raise ValueError("n_batches must be at least 2: the workshop archive and an online week")
    if not 0.0 <= synthetic_share <= 1.0:
        raise ValueError(f"synthetic_share must be within 0..1, got {synthetic_share}")
    root = Path(root)
    options = {
        "n_batches": n_batches,
        "seed": seed,
        "max_train_photos": max_train_photos,
        "max_holdout_photos": max_holdout_photos,
        "inject_faults": inject_faults,
        "start": start,
        "synthetic_share": synthetic_share,
    }
    if not (root.exists() and any(root.iterdir())):
        root.mkdir(parents=True, exist_ok=True)
        return _build(root, **options)
    if not overwrite:
        raise FileExistsError(f"{root} is not empty; pass overwrite=True to replace it")
    staging = root.with_name(f".{root.name}.staging")
    retired = root.with_name(f".{root.name}.replaced")
    for leftover in (staging, retired):
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir()
    try:
        summary = _build(staging, **options)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    root.rename(retired)
    staging.rename(root)
    shutil.rmtree(retired)
    return dataclasses.replace(summary, root=root)
