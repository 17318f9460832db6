"""The chatbot's slot filler: one row of structured answers per chat transcript.

A transcript is a sequence of turns; every bot turn names the slot its question is for (`asks`)
and the customer turns after it answer that question. Each slot has its own parser, applied only
to the answers of that slot, so a number in the damage description never becomes an age and a
stray digit run in a name answer never becomes a phone number. An answer that declines ("I'd
rather not say", "no thanks") yields null rather than a guess.

Everything is vectorised polars: the slot of each customer turn comes from a forward fill over
the bot turns, the parsers are regular expressions (Rust `regex` syntax, no look-around), and the
per-transcript row is a group-by that keeps the first usable answer of each slot.

The damage answer also yields the damage level the customer reports (0-3, the technicians'
scale), from the severity vocabulary DAMAGE_LEVEL_CUES; it is the chatbot's label of the photo,
with a confidence, and null when the answer is declined or no level stands out.
"""

import polars as pl

EXTRACTOR_VERSION = "slots-1.1"

TURN_COLUMNS = ("transcript_id", "request_id", "turn_index", "speaker", "asks", "text")

OUTPUT_SCHEMA = pl.Schema(
    {
        "transcript_id": pl.String,
        "request_id": pl.String,
        "damage_details": pl.String,
        "damage_keywords": pl.List(pl.String),
        "reported_damage_level": pl.Int64,
        "reported_level_confidence": pl.Float64,
        "name": pl.String,
        "email": pl.String,
        "phone": pl.String,
        "age": pl.Int64,
        "senior_citizen": pl.Boolean,
        "partner": pl.Boolean,
        "dependents": pl.Boolean,
        "captured_email": pl.Boolean,
        "captured_phone": pl.Boolean,
        "captured_name": pl.Boolean,
        "extractor_version": pl.String,
    }
)

SENIOR_AGE = 65
MIN_AGE = 1
MAX_AGE = 120

# A bot turn without a slot (a greeting, a hand-over message) ends the previous question: the
# forward fill carries this marker instead of the last slot, and the marker is then dropped.
_NO_SLOT = ""

# Answers that refuse the question as a whole, matched on the lower-cased answer.
_DECLINE = (
    r"^(?:no|nope|nah|n/?a|none|pass|skip|-+|\.+|\?+)[.!]*$"
    r"|\b(?:rather not|prefer not|would not like to|wouldn't like to|don't want to"
    r"|do not want to|not comfortable|uncomfortable|won't say|will not say|not saying"
    r"|not telling|won't tell|no,? thanks|no,? thank you|none of your business|no comment"
    r"|decline|skip (?:this|that|it)|pass on (?:this|that)|keep (?:that|it|this) private"
    r"|not going to (?:say|share|tell)|not sharing|i'd rather)\b"
)

# Damage vocabulary: keyword -> pattern. The patterns run on the lower-cased damage answer with
# negated mentions removed ("no water damage" does not mean water), except the keywords in
# _DAMAGE_ON_RAW_TEXT, whose phrasings are negations themselves ("won't turn on").
DAMAGE_VOCABULARY: dict[str, str] = {
    "crack": r"\b(?:crack(?:s|ed|ing)?|fractur(?:e|ed|es))\b",
    "broken": r"\b(?:broken|broke|break(?:s|ing)?|snapped)\b",
    "shattered": r"\b(?:shatter(?:s|ed|ing)?|smashed)\b",
    "scratch": r"\b(?:scratch(?:es|ed|y)?|scuff(?:s|ed)?)\b",
    "dent": r"\b(?:dent(?:s|ed)?|bent)\b",
    "dead": (
        r"\b(?:dead|died|no power|(?:won't|doesn't|does not|will not|didn't|did not)"
        r" (?:turn|power|switch|start|boot) (?:on|up)|not (?:turning|powering|switching|booting)"
        r" (?:on|up))\b"
    ),
    "black": r"\b(?:black(?:ed|ened)?(?: out)?|dark(?:ened)?)\b",
    "overheating": (
        r"\b(?:over-?heat(?:s|ed|ing)?|(?:gets?|getting|got|runs?|running|very|too|really) hot"
        r"|hot to the touch)\b"
    ),
    "flicker": r"\b(?:flicker(?:s|ed|ing|y)?|blink(?:s|ing)?|flash(?:es|ing))\b",
    "water": (
        r"\b(?:water|wet|liquid|spill(?:s|ed|t)?|moisture|rain(?:water)?|flood(?:ed)?|damp"
        r"|submerged|soaked)\b"
    ),
    "burn": r"\b(?:burn(?:s|t|ed|ing)?|scorch(?:ed|es)?|melt(?:s|ed|ing)?|smok(?:e|es|ed|ing))\b",
    "corrosion": r"\b(?:corro(?:sion|ded|ding|sive)|rust(?:y|ed|ing)?|oxidi[sz](?:ed|ation))\b",
    "dropped": r"\b(?:drop(?:s|ped)?|fell|fall(?:en)?|knocked over)\b",
    "loose": r"\b(?:loose|wobbl(?:y|es|ing)|rattl(?:e|es|ing))\b",
    "battery": r"\bbatter(?:y|ies)\b",
    "charging": (
        r"\b(?:(?:won't|doesn't|does not|will not|isn't|is not|not) (?:charge|charging|hold(?:ing)?"
        r" (?:a )?charge)|charg(?:er|ing) (?:issue|problem|fault|port))\b"
    ),
    "noise": (
        r"\b(?:nois(?:e|es|y)|buzz(?:es|ing)?|whin(?:e|es|ing)|hum(?:s|ming)?|click(?:s|ing))\b"
    ),
    "discolored": r"\b(?:discolou?r(?:ed|ation)?|yellow(?:ed|ing)|faded|brown(?:ed)? spots?)\b",
    "stain": r"\b(?:stain(?:s|ed)?|smudg(?:e|es|ed))\b",
}
_DAMAGE_ON_RAW_TEXT = frozenset({"dead", "charging"})
_DAMAGE_NEGATION = (
    r"\b(?:no|not|never|without|isn't|wasn't|aren't|weren't|hasn't|haven't|zero)\s+"
    r"(?:(?:any|been|got|a|an|the|signs? of|visible|obvious|real)\s+){0,2}[\w-]+"
)

# Damage levels the customer reports, on the technicians' 0-3 scale: level -> cue -> pattern, on
# the lower-cased damage answer. Level 0 cues and the cues in _LEVEL_CUES_ON_RAW_TEXT are
# negations themselves ("nothing visible", "doesn't light up") and run on the raw answer; the
# others run with negated mentions removed, so "no big crack" is no cue. Each matching cue is one
# vote for its level: the reported level is the level with the most votes, null on a tie or
# when nothing matches, and its confidence is its share of all votes (1.0 when every cue agrees).
DAMAGE_LEVEL_CUES: dict[int, dict[str, str]] = {
    # Nothing visible: the customer sees no damage at all.
    0: {
        "nothing_visible": (
            r"\bnothing (?:visible|wrong|obvious)\b|\bnothing (?:is |looks )?(?:broken|damaged)\b"
        ),
        "sees_no_damage": (
            r"\b(?:can't|cannot|can not|don't|do not|couldn't|could not) (?:see|find|spot)"
            r" (?:anything|any damage|a thing|any cracks?)\b"
        ),
        "looks_fine": (
            r"\b(?:looks?|seems?) (?:okay|ok|fine|normal|good|intact|undamaged)\b|\bundamaged\b"
            r"|\bno (?:visible |obvious )?(?:damage|cracks?|marks?)\b"
        ),
    },
    # Minor: one small mark, a thin line or a few spots, often at an edge or corner.
    1: {
        "small_mark": (
            r"\b(?:thin|small|tiny|hairline|minor|faint|little|slight)(?: \w+)?"
            r" (?:lines?|cracks?|scratch(?:es)?|spots?|marks?|chips?)\b"
        ),
        "edge_or_corner": (
            r"\b(?:near|at|on|in|across|along) (?:the |one |a )?(?:edges?|corners?)\b"
        ),
        "a_few_spots": (
            r"\b(?:a couple of|a few|one or two|two or three)(?: \w+){0,2}"
            r" (?:spots?|lines?|marks?|dots?)\b"
        ),
    },
    # Moderate: a clear crack, or a part of the cell gone darker.
    2: {
        "clear_crack": r"\b(?:clear|visible|noticeable|obvious|proper|long|deep) cracks?\b",
        "part_darker": (
            r"\b(?:part|section|area|region|chunk|patch|piece)(?: of it)? (?:\w+ ){0,3}"
            r"(?:darker|dimmer|grey|gray|dim)\b"
        ),
        "dimmer": r"\b(?:darker|dimmer|greyer|grayer|gone grey|gone gray)\b",
        "cracks": r"\b(?:there are|there's|with|and) (?:some |several |a few |two )?cracks\b",
    },
    # Severe: badly broken, or most of the cell dark.
    3: {
        "badly_damaged": (
            r"\b(?:badly|severely|heavily|completely|totally) (?:cracked|damaged|broken)\b"
        ),
        "mostly_dark": r"\b(?:most|half|all|much)(?: of it)? (?:\w+ ){0,4}(?:black|dark|dead)\b",
        "large_part": r"\b(?:big|large|huge|major|good) (?:part|portion|half)\b",
        "completely_dark": r"\b(?:completely|totally|entirely|fully|mostly) (?:dark|black|dead)\b",
        "broken": r"\b(?:shattered|smashed|broken|destroyed|ruined)\b",
        "no_light": (
            r"\b(?:doesn't|does not|don't|do not|won't|will not|no longer|not) (?:light up|glow)\b"
        ),
    },
}
_LEVEL_CUES_ON_RAW_TEXT = frozenset({"no_light"})

# Names: strip polite openers and "my name is"-style lead-ins, cut at the first clause break,
# then accept only one to five words of letters (apostrophes, hyphens and dots inside), with an
# optional title.
_NAME_LEAD_IN = (
    r"(?i)^(?:(?:sure|yes|yeah|yep|ok|okay|hi|hello|hey|of course|certainly)[\s,!.:-]+)*"
    r"(?:(?:(?:my|the) name(?: is|'s)|name's|name is|it's|it is|its|i'm|i am|this is"
    r"|(?:you can )?call me|they call me)[\s,:-]+)?"
)
_NAME_CLAUSE = r"^([^,;!?()]*)"
_NAME_TAIL = r"(?i)\s+(?:here|thanks|thank you|please|speaking)\W*$"
# Stripping a sentence's closing dot also strips the one of "Jr." and "Sr."; it is put back.
_NAME_SUFFIX_DOT = r"(?i)\b(jr|sr)$"
_NAME_WORD = r"\p{L}[\p{L}'.-]*"
_NAME_SHAPE = (
    rf"(?i)^(?:(?:dr|mr|mrs|ms|miss|mx|prof|sir)\.?\s+)?{_NAME_WORD}(?:\s+{_NAME_WORD}){{0,4}}$"
)
_NAME_STOPWORDS = (
    r"(?i)\b(?:yes|no|nope|sure|ok|okay|thanks|thank|please|hello|hi|hey|why|what|who|name"
    r"|email|e-mail|phone|number|skip|pass|none|nothing|not|rather|prefer|private|anonymous"
    r"|unknown|idk|later|don't|dont|nobody|me|secret|sorry|confidential|a|the)\b"
)

# E-mail: a dotted domain is required, so "ann@localhost" or "ann@example" is no address.
_EMAIL = (
    r"(?i)(?:^|[^\w.%+-])([a-z0-9](?:[a-z0-9._%+-]*[a-z0-9_%+-])?"
    r"@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,})(?:[^\w@-]|$)"
)

# Phone: optional country code, optional area code (in brackets or not), a 3+4 digit local
# number and an optional extension; the digit run must not continue on either side.
_PHONE = (
    r"(?i)(?:^|[^\d+])((?:(?:\+|00)\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-]?)?"
    r"\d{3}[\s.-]?\d{4}(?:\s*(?:x|ext\.?|extension)\s*\d{1,6})?)(?:\D|$)"
)

_AGE_WITH_UNIT = r"\b(\d{1,3})\s*(?:years?|yrs?|y\.?o\.?)\b"
_AGE_BARE = r"\b(\d{1,3})\b"
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}  # fmt: skip
_UNITS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9,
}  # fmt: skip
_TEENS = {"eighteen": 18, "nineteen": 19}
_AGE_WORDS = rf"\b({'|'.join(_TENS)})(?:[\s-]+({'|'.join(_UNITS)}))?\b"
_AGE_TEEN_WORDS = rf"\b({'|'.join(_TEENS)})\b"

# Household answers. Negated mentions ("no kids", "my ex-wife") are removed before the positive
# patterns run; an answer that names nobody we recognise stays null instead of guessing false.
_PARTNER_WORDS = (
    r"partner|wife|husband|spouse|girlfriend|boyfriend|fianc[eé]e?|other half|significant other"
    r"|hubby|missus|married"
)
_DEPENDENT_WORDS = (
    r"kids?|child(?:ren)?|sons?|daughters?|bab(?:y|ies)|toddlers?|teens?|teenagers?|twins"
    r"|grandkids?|grandchild(?:ren)?|grandsons?|granddaughters?|step-?(?:sons?|daughters?|kids?)"
    r"|little ones|dependents?|boys|girls"
)
_HOUSEHOLD_NEGATION = (
    rf"\b(?:ex-?\s?(?:{_PARTNER_WORDS})"
    rf"|(?:no|without|zero|never|not|don't have|do not have|haven't got|don't live with"
    rf"|do not live with)\s+(?:[\w']+\s+){{0,2}}?(?:{_PARTNER_WORDS}|{_DEPENDENT_WORDS}))\b"
)
_PARTNER = rf"\b(?:{_PARTNER_WORDS})\b"
_DEPENDENTS = rf"\b(?:{_DEPENDENT_WORDS})\b"
_HOUSEHOLD_SOLO = (
    r"\b(?:just me|only me|me only|just myself|alone|by myself|on my own|myself|nobody|no one"
    r"|noone|single|solo|live by me)\b"
)
_HOUSEHOLD_OTHERS = (
    r"\b(?:parents?|mom|mum|mother|dad|father|roommates?|room-mates?|flatmates?|housemates?"
    r"|friends?|sisters?|brothers?|siblings?|grand(?:ma|pa|mother|father|parents?)|aunt|uncle"
    r"|cousins?|dogs?|cats?|pets?|lodgers?|tenants?)\b"
)


def _lower_text() -> pl.Expr:
    """The answer lower-cased, with typographic apostrophes made plain for the patterns."""
    return pl.col("text").str.replace_all("\u2019", "'", literal=True).str.to_lowercase()


def _name_expr() -> pl.Expr:
    text = pl.col("text").str.replace_all("\u2019", "'", literal=True).str.strip_chars()
    candidate = (
        text.str.replace(_NAME_LEAD_IN, "")
        .str.extract(_NAME_CLAUSE, 1)
        .str.replace(_NAME_TAIL, "")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars(" .:-'\t")
        .str.replace(_NAME_SUFFIX_DOT, "$1.")
    )
    usable = candidate.str.contains(_NAME_SHAPE) & ~candidate.str.contains(_NAME_STOPWORDS)
    return pl.when(usable).then(candidate)


def _age_expr() -> pl.Expr:
    lower = pl.col("_lower")
    digits = pl.coalesce(
        lower.str.extract(_AGE_WITH_UNIT, 1), lower.str.extract(_AGE_BARE, 1)
    ).cast(pl.Int64)
    tens = lower.str.extract(_AGE_WORDS, 1).replace_strict(
        _TENS, default=None, return_dtype=pl.Int64
    )
    units = lower.str.extract(_AGE_WORDS, 2).replace_strict(
        _UNITS, default=0, return_dtype=pl.Int64
    )
    teens = lower.str.extract(_AGE_TEEN_WORDS, 1).replace_strict(
        _TEENS, default=None, return_dtype=pl.Int64
    )
    age = pl.coalesce(digits, tens + units, teens)
    return pl.when(age.is_between(MIN_AGE, MAX_AGE)).then(age)


def _household_exprs() -> tuple[pl.Expr, pl.Expr]:
    lower = pl.col("_lower")
    cleaned = lower.str.replace_all(_HOUSEHOLD_NEGATION, " ")
    partner = cleaned.str.contains(_PARTNER)
    dependents = cleaned.str.contains(_DEPENDENTS)
    recognised = (
        partner
        | dependents
        | lower.str.contains(_HOUSEHOLD_NEGATION)
        | lower.str.contains(_HOUSEHOLD_SOLO)
        | lower.str.contains(_HOUSEHOLD_OTHERS)
    )
    return pl.when(recognised).then(partner), pl.when(recognised).then(dependents)


def damage_keywords(details: pl.Expr) -> pl.Expr:
    """The DAMAGE_VOCABULARY keywords a damage description mentions, in vocabulary order."""
    lower = details.str.replace_all("\u2019", "'", literal=True).str.to_lowercase()
    affirmed = lower.str.replace_all(_DAMAGE_NEGATION, " ")
    hits = [
        pl.when((lower if keyword in _DAMAGE_ON_RAW_TEXT else affirmed).str.contains(pattern))
        .then(pl.lit(keyword))
        .otherwise(pl.lit(None, dtype=pl.String))
        for keyword, pattern in DAMAGE_VOCABULARY.items()
    ]
    return pl.concat_list(hits).list.drop_nulls()


def reported_damage_level(details: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """The damage level a description reports (DAMAGE_LEVEL_CUES) and the share of cue votes
    it won; both null for a null description, a tie or a description with no cue."""
    lower = details.str.replace_all("\u2019", "'", literal=True).str.to_lowercase()
    affirmed = lower.str.replace_all(_DAMAGE_NEGATION, " ")
    votes = [
        pl.sum_horizontal(
            (lower if level == 0 or cue in _LEVEL_CUES_ON_RAW_TEXT else affirmed)
            .str.contains(pattern)
            .fill_null(False)
            .cast(pl.Int64)
            for cue, pattern in cues.items()
        )
        for level, cues in sorted(DAMAGE_LEVEL_CUES.items())
    ]
    top = pl.max_horizontal(votes)
    total = pl.sum_horizontal(votes)
    winners = pl.sum_horizontal((vote == top).cast(pl.Int64) for vote in votes)
    clear = (top > 0) & (winners == 1)
    level = pl.coalesce(
        pl.when(vote == top).then(pl.lit(index, pl.Int64)) for index, vote in enumerate(votes)
    )
    return (
        pl.when(clear).then(level),
        pl.when(clear).then(top.cast(pl.Float64) / total),
    )


def _normalise_turns(turns: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in TURN_COLUMNS if c not in turns.columns]
    if missing:
        raise ValueError(f"turns frame lacks columns {missing}")
    return turns.select(
        pl.col("transcript_id").cast(pl.String),
        pl.col("request_id").cast(pl.String),
        pl.col("turn_index").cast(pl.Int64),
        pl.col("speaker").cast(pl.String).str.strip_chars().str.to_lowercase(),
        pl.col("asks").cast(pl.String).str.strip_chars().str.to_lowercase(),
        pl.col("text").cast(pl.String).fill_null(""),
    )


def extract_slots(turns: pl.DataFrame) -> pl.DataFrame:
    """Fill the chatbot slots of every transcript from its turns (one output row per transcript)."""
    ordered = _normalise_turns(turns).sort("transcript_id", "turn_index")
    slot = (
        pl.when(pl.col("speaker") == "bot")
        .then(pl.col("asks").fill_null(_NO_SLOT))
        .forward_fill()
        .over("transcript_id")
    )
    answers = (
        ordered.with_columns(slot=slot, _lower=_lower_text())
        .filter((pl.col("speaker") == "customer") & pl.col("slot").is_not_null())
        .filter(pl.col("slot") != _NO_SLOT)
        .with_columns(
            _usable=~pl.col("_lower").str.strip_chars().str.contains(_DECLINE)
            & (pl.col("_lower").str.strip_chars() != "")
        )
    )
    partner, dependents = _household_exprs()

    def for_slot(name: str, value: pl.Expr) -> pl.Expr:
        return pl.when((pl.col("slot") == name) & pl.col("_usable")).then(value)

    parsed = answers.with_columns(
        damage_text=for_slot("damage", pl.col("text").str.strip_chars()),
        name=for_slot("name", _name_expr()),
        email=for_slot("email", pl.col("_lower").str.extract(_EMAIL, 1)),
        phone=for_slot("phone", pl.col("text").str.extract(_PHONE, 1).str.strip_chars()),
        age=for_slot("age", _age_expr()),
        partner=for_slot("household", partner),
        dependents=for_slot("household", dependents),
    )
    slots = parsed.group_by("transcript_id").agg(
        pl.col("damage_text").drop_nulls().str.join(" ").alias("damage_details"),
        *(
            pl.col(c).drop_nulls().first()
            for c in ("name", "email", "phone", "age", "partner", "dependents")
        ),
    )
    transcripts = ordered.group_by("transcript_id").agg(pl.col("request_id").drop_nulls().first())
    reported_level, reported_confidence = reported_damage_level(pl.col("damage_details"))
    out = (
        transcripts.join(slots, on="transcript_id", how="left")
        .with_columns(
            pl.when(pl.col("damage_details") != "")
            .then(pl.col("damage_details"))
            .alias("damage_details"),
        )
        .with_columns(
            damage_keywords=damage_keywords(pl.col("damage_details").fill_null("")),
            reported_damage_level=reported_level,
            reported_level_confidence=reported_confidence,
            senior_citizen=pl.col("age") >= SENIOR_AGE,
            captured_email=pl.col("email").is_not_null(),
            captured_phone=pl.col("phone").is_not_null(),
            captured_name=pl.col("name").is_not_null(),
            extractor_version=pl.lit(EXTRACTOR_VERSION),
        )
        .sort("transcript_id")
    )
    return out.select(pl.col(name).cast(dtype) for name, dtype in OUTPUT_SCHEMA.items())
