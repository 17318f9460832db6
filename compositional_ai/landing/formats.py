"""The landing contract: the folders and files a deployment drops, and the fields in each.

Layout under the landing root::

    reference/
        catalog.csv                 product listings (CATALOG_COLUMNS)
        holdout/labels.csv          the fixed evaluation holdout (HOLDOUT_COLUMNS)
        holdout/photos/<file>.png
    batches/<batch_id>/
        requests.jsonl              one repair request per line (REQUEST_FIELDS)
        photos/<file>.png           the photos the requests name, relative to the batch folder
        chats.jsonl                 one chatbot transcript per line (CHAT_FIELDS)
        customers.csv               CRM export of the customers seen in the batch (CUSTOMER_COLUMNS)
        outcomes.csv                technician outcomes (OUTCOME_COLUMNS), for the previous
                                    batch's requests; the first batch confirms its own
        synthetic.csv               the synthetic photos of the batch (SYNTHETIC_COLUMNS)
        synthetic/<file>.png        synthetic photos, each made from one real photo (its parent)
        _READY                      written last: JSON manifest {"files": {name: sha256}, ...}

A batch folder without `_READY` is still being written and is never ingested. The synthetic
files are optional; a batch without them has no synthetic photos.
"""

READY_MARKER = "_READY"
REQUESTS_FILE = "requests.jsonl"
CHATS_FILE = "chats.jsonl"
CUSTOMERS_FILE = "customers.csv"
OUTCOMES_FILE = "outcomes.csv"
PHOTOS_DIR = "photos"
SYNTHETIC_FILE = "synthetic.csv"
SYNTHETIC_DIR = "synthetic"

CATALOG_FILE = "catalog.csv"
HOLDOUT_DIR = "holdout"
HOLDOUT_LABELS_FILE = "labels.csv"

# requests.jsonl: {"request_id": str, "submitted_at": ISO 8601 with offset, "channel":
# "workshop" | "online", "customer_id": str, "product_id": str, "photo": "photos/<file>.png",
# "customer": {"name": str, "email": str, "phone": str}}
REQUEST_FIELDS = (
    "request_id",
    "submitted_at",
    "channel",
    "customer_id",
    "product_id",
    "photo",
    "customer",
)
CUSTOMER_CONTACT_FIELDS = ("name", "email", "phone")
CHANNELS = ("workshop", "online")

# chats.jsonl: {"transcript_id": str, "request_id": str, "turns": a list of turns}; a turn is
# {"speaker": "bot" | "customer", "text": str, "at": ISO 8601 with offset} and, on bot turns only,
# "asks": the entry of CHAT_SLOTS the bot's question is for.
# A customer turn answers the bot turn before it; the customer may decline to answer.
CHAT_FIELDS = ("transcript_id", "request_id", "turns")
SPEAKERS = ("bot", "customer")
CHAT_SLOTS = ("damage", "name", "email", "phone", "age", "household", "closing")

# Customer holdings are the services of the real wa_churn customers; contact fields are generated.
SERVICE_COLUMNS = (
    "phone_service",
    "multiple_lines",
    "internet_dsl",
    "internet_fiber",
    "online_security",
    "online_backup",
    "device_protection",
    "tech_support",
    "streaming_tv",
    "streaming_movies",
)
CUSTOMER_COLUMNS = (
    "customer_id",
    "name",
    "email",
    "phone",
    "gender",
    "senior_citizen",
    "partner",
    "dependents",
    "tenure_months",
    "contract",
    "paperless_billing",
    "payment_method",
    "monthly_charges",
    "total_charges",
    "churn",
    *SERVICE_COLUMNS,
)

# damage_level is 0..3 = defect_probability * 3; quote_accepted false means no inspection, so
# the label fields are empty.
OUTCOME_COLUMNS = (
    "request_id",
    "technician_id",
    "inspected_at",
    "quote_accepted",
    "damage_level",
    "defect_probability",
    "cell_type",
)
CELL_TYPES = ("mono", "poly")
DAMAGE_LEVELS = (0, 1, 2, 3)

CATALOG_COLUMNS = ("product_id", "product_line", "title", "list_price_usd", "rating")

HOLDOUT_COLUMNS = ("photo_file", "sha256", "defect_probability", "damage_level", "cell_type")
# An optional holdout column: who gave the label. Only technician (expert) labels may evaluate a
# model; a holdout row with another origin fails the holdout's blocking check.
HOLDOUT_ORIGIN_COLUMN = "label_origin"

# Who gave a damage label: a technician who inspected the photo (the only confirmed labels), the
# repair model's prediction, the customer's own description in the chat, or the parent's
# technician label carried over to a synthetic photo.
TECHNICIAN = "technician"
MODEL = "model"
CHATBOT = "chatbot"
SYNTHETIC = "synthetic"
LABEL_ORIGINS = (TECHNICIAN, MODEL, CHATBOT, SYNTHETIC)

# synthetic.csv: one row per synthetic photo. photo is "synthetic/<file>.png"; sha256 is the
# photo's digest and parent_sha256 the digest of the real training photo it was made from (a
# photo of this batch or an earlier one, never a holdout photo); synthetic must be true;
# generator_version names the generator; transforms describes what it did (JSON, optional). A
# synthetic photo carries no label of its own: it inherits its parent's technician label.
SYNTHETIC_COLUMNS = (
    "photo",
    "sha256",
    "parent_sha256",
    "synthetic",
    "generator_version",
    "transforms",
)
