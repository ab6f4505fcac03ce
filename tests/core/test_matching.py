"""Normalisation, label-boundary matching, SNI globs and store-URL recognisers:
tables of cases plus hypothesis properties."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from policies import PolicyError, load_policy, normalize_name, recognize_store_url
from policies.matching import (
    GlobMatcher,
    NameIndexBuilder,
    fast_normalize,
    glob_to_regex,
    suffixes,
    validate_glob,
)
from policies.model import Rule, RuleKind, Tier
from tests.core.conftest import MINIMAL_APP

NORMALIZE_CASES = [
    pytest.param("www.tiktok.com", "www.tiktok.com", id="already-normal"),
    pytest.param("WWW.TikTok.Com", "www.tiktok.com", id="case"),
    pytest.param("www.tiktok.com.", "www.tiktok.com", id="trailing-dot"),
    pytest.param(" \twww.tiktok.com\n", "www.tiktok.com", id="whitespace"),
    pytest.param("\u3000www.tiktok.com\u00a0", "www.tiktok.com", id="unicode-whitespace"),
    pytest.param("bücher.de", "xn--bcher-kva.de", id="idna"),
    pytest.param("BÜCHER.DE.", "xn--bcher-kva.de", id="idna-upper-dot"),
    pytest.param("XN--BCHER-KVA.de", "xn--bcher-kva.de", id="punycode-upper"),
    pytest.param("bücher。de", "xn--bcher-kva.de", id="ideographic-full-stop"),
    pytest.param("bücher.de。", "xn--bcher-kva.de", id="ideographic-trailing-dot"),
    pytest.param("例え.テスト", "xn--r8jz45g.xn--zckzah", id="idna-japanese"),
    pytest.param("", "", id="empty"),
    pytest.param(".", "", id="root"),
    pytest.param("1.2.3.4", "1.2.3.4", id="ip-literal"),
]


@pytest.mark.parametrize(("raw", "want"), NORMALIZE_CASES)
def test_normalize_name(raw: str, want: str) -> None:
    assert normalize_name(raw) == want
    assert fast_normalize(raw) == want


LABEL = st.text(alphabet=string.ascii_lowercase + string.digits + "-", min_size=1, max_size=20).filter(
    lambda s: not s.startswith("-") and not s.endswith("-")
)
NAME = st.lists(LABEL, min_size=1, max_size=5).map(".".join)
UNICODE_LABEL = st.text(
    alphabet=st.characters(whitelist_categories=("Ll", "Lu", "Lo", "Nd")), min_size=1, max_size=12
)
UNICODE_NAME = st.lists(UNICODE_LABEL, min_size=1, max_size=4).map(".".join)
ANY_TEXT = st.text(max_size=60)


@given(ANY_TEXT)
def test_normalize_is_idempotent(raw: str) -> None:
    once = normalize_name(raw)
    assert normalize_name(once) == once
    assert fast_normalize(raw) == once


@given(
    st.one_of(NAME, UNICODE_NAME),
    st.sampled_from(["", " ", "\t", "\n "]),
    st.sampled_from(["", " ", "\r\n"]),
    st.booleans(),
    st.booleans(),
)
def test_normalize_ignores_case_trailing_dot_and_whitespace(
    name: str, lead: str, trail: str, upper: bool, dot: bool
) -> None:
    # Unicode case pairs that do not round-trip (dotless ı → I → i) are
    # different names, in IDNA as in DNS.
    assume(name.upper().lower() == name.lower())
    variant = name.upper() if upper else name
    variant = lead + variant + ("." if dot else "") + trail
    assert normalize_name(variant) == normalize_name(name)


@given(UNICODE_NAME)
def test_idna_round_trip(name: str) -> None:
    """Unicode and punycode spellings of a name normalise to the same ASCII form."""
    ascii_form = normalize_name(name)
    try:
        unicode_form = ascii_form.encode("ascii").decode("idna")
    except UnicodeError:
        assume(False)  # a label the IDNA codec refuses is kept as typed; nothing to round-trip
        return
    assert ascii_form.isascii() or not all(label.isascii() for label in ascii_form.split("."))
    assert normalize_name(unicode_form) == ascii_form
    assert normalize_name(ascii_form.upper()) == ascii_form


def _index(*domains: str) -> NameIndexBuilder:
    b = NameIndexBuilder()
    for d in domains:
        b.add(d, Rule(RuleKind.DOMAIN, Tier.TRAFFIC, "app"), exact=False)
    return b


@settings(max_examples=300)
@given(NAME, st.lists(LABEL, max_size=3), LABEL, NAME)
def test_label_boundary_matching(domain: str, below: list[str], junk: str, other: str) -> None:
    """`d` matches d and x.d; never <junk>d (no dot) and never d.<other>."""
    index = _index(domain).build()
    sub = ".".join([*below, domain])
    assert index.lookup(domain) is not None and index.lookup(domain)[0] == domain  # type: ignore[index]
    assert index.lookup(sub) is not None and index.lookup(sub)[0] == domain  # type: ignore[index]
    assert index.lookup(junk + domain) is None
    assert index.lookup(f"{domain}.{other}") is None or f"{domain}.{other}".endswith("." + domain)


@given(NAME, NAME)
def test_most_specific_suffix_wins(parent: str, child_label: str) -> None:
    assume(child_label != "x")  # else "x." + parent is the child itself
    child = f"{child_label}.{parent}"
    b = NameIndexBuilder()
    b.add(parent, Rule(RuleKind.DOMAIN, Tier.TRAFFIC, "a"), exact=False)
    b.add(child, Rule(RuleKind.ALLOW, Tier.ALLOW), exact=False)
    index = b.build()
    assert index.lookup("x." + child)[0] == child  # type: ignore[index]
    assert index.lookup("x." + parent)[0] == parent  # type: ignore[index]


@given(NAME)
def test_suffixes_are_label_boundaries(name: str) -> None:
    got = list(suffixes(name))
    labels = name.split(".")
    assert got == [".".join(labels[i:]) for i in range(len(labels))]


GLOB_CASES = [
    pytest.param("*.tiktokcdn-*.com", "a.tiktokcdn-us.com", True, id="two-stars"),
    pytest.param("*.tiktokcdn-*.com", "tiktokcdn-us.com", False, id="leading-star-needs-label"),
    pytest.param("*.tiktokcdn-*.com", "a.b.tiktokcdn-us.com", False, id="star-one-label"),
    pytest.param("*.tiktokcdn-*.com", "a.tiktokcdn-us.com.evil.net", False, id="anchored-end"),
    pytest.param("p16-*.akamaized.net", "p16-sign.akamaized.net", True, id="prefix"),
    pytest.param("p16-*.akamaized.net", "xp16-sign.akamaized.net", False, id="anchored-start"),
    pytest.param("api*.example.com", "api.example.com", True, id="star-may-be-empty"),
    pytest.param("a.b.example.com", "a.b.example.com", True, id="literal"),
    pytest.param("a.b.example.com", "aXb.example.com", False, id="dot-is-literal"),
]


@pytest.mark.parametrize(("pattern", "name", "hit"), GLOB_CASES)
def test_glob_matching(pattern: str, name: str, hit: bool) -> None:
    rule = Rule(RuleKind.SNI, Tier.TRAFFIC, "app", pattern=pattern)
    assert (GlobMatcher([(pattern, rule)]).lookup(name) is not None) is hit
    import re

    assert (re.fullmatch(glob_to_regex(pattern), name) is not None) is hit


BAD_GLOB_CASES = [
    pytest.param("**.example.com", "'**' is not allowed", id="double-star"),
    pytest.param("a?.example.com", "only '*' is a wildcard", id="question-mark"),
    pytest.param("[ab].example.com", "only '*' is a wildcard", id="brackets"),
    pytest.param("example", "at least two labels", id="one-label"),
    pytest.param("*.*", "at least one label must be literal", id="all-stars"),
    pytest.param("example.*", "the top-level label must be literal", id="star-tld"),
    pytest.param("a..example.com", "labels may hold only", id="empty-label"),
    pytest.param("a b.example.com", "only '*' is a wildcard", id="space"),
]


@pytest.mark.parametrize(("pattern", "message"), BAD_GLOB_CASES)
def test_validate_glob_rejects(pattern: str, message: str) -> None:
    problem = validate_glob(pattern)
    assert problem is not None and message in problem


@given(NAME)
def test_glob_star_label_matches_exactly_one_label(name: str) -> None:
    pattern = "*." + name
    rule = Rule(RuleKind.SNI, Tier.TRAFFIC, "app", pattern=pattern)
    g = GlobMatcher([(pattern, rule)])
    assert g.lookup(name) is None
    assert g.lookup("x." + name) is not None
    assert g.lookup("x.y." + name) is None


STORE_URL_CASES = [
    pytest.param(
        "itunes.apple.com",
        "https://itunes.apple.com/WebObjects/MZStore.woa/wa/viewSoftware?id=835599320&mt=8",
        None,
        ("apple", "835599320"),
        id="itunes-webobjects",
    ),
    pytest.param(
        "apps.apple.com",
        "https://apps.apple.com/us/app/tiktok/id835599320",
        None,
        ("apple", "835599320"),
        id="apple-listing",
    ),
    pytest.param(
        "apps.apple.com",
        "https://apps.apple.com/gb/app/tiktok-videos/id835599320?l=es",
        None,
        ("apple", "835599320"),
        id="apple-listing-query",
    ),
    pytest.param(
        "apps.apple.com",
        "https://apps.apple.com/app/id835599320",
        None,
        ("apple", "835599320"),
        id="apple-short",
    ),
    pytest.param(
        "itunes.apple.com",
        "https://itunes.apple.com/us/app/tiktok/id835599320?mt=8",
        None,
        ("apple", "835599320"),
        id="itunes-listing",
    ),
    pytest.param(
        "itunes.apple.com",
        "https://itunes.apple.com/lookup?id=835599320&country=us",
        None,
        ("apple", "835599320"),
        id="itunes-lookup",
    ),
    pytest.param(
        "itunes.apple.com",
        "https://itunes.apple.com/lookup?id=835599320,414478124",
        None,
        ("apple", "835599320"),
        id="itunes-lookup-several",
    ),
    pytest.param(
        "itunes.apple.com",
        "https://itunes.apple.com/lookup?id=abc",
        None,
        None,
        id="itunes-lookup-not-numeric",
    ),
    pytest.param("apps.apple.com", "https://apps.apple.com/us/charts/iphone", None, None, id="apple-charts"),
    pytest.param(
        "apps.apple.com", "https://apps.apple.com/us/app/x/id12", None, None, id="apple-id-too-short"
    ),
    pytest.param(
        "play.google.com",
        "https://play.google.com/store/apps/details?id=com.zhiliaoapp.musically&hl=en_US",
        None,
        ("google_play", "com.zhiliaoapp.musically"),
        id="play-listing",
    ),
    pytest.param(
        "play.google.com", "https://play.google.com/store/search?q=tiktok", None, None, id="play-search"
    ),
    pytest.param(
        "play.google.com", "https://play.google.com/store/apps/details", None, None, id="play-no-id"
    ),
    pytest.param(
        "android.clients.google.com",
        "https://android.clients.google.com/fdfe/details?doc=com.tencent.mm",
        None,
        ("google_play", "com.tencent.mm"),
        id="fdfe-details",
    ),
    pytest.param(
        "android.clients.google.com",
        "https://android.clients.google.com/fdfe/delivery?doc=com.tencent.mm&ot=1&vc=1",
        None,
        ("google_play", "com.tencent.mm"),
        id="fdfe-delivery",
    ),
    pytest.param(
        "android.clients.google.com",
        "https://android.clients.google.com/fdfe/purchase",
        b"ot=1&doc=com.tencent.mm&vc=1",
        ("google_play", "com.tencent.mm"),
        id="fdfe-purchase-body",
    ),
    pytest.param(
        "android.clients.google.com",
        "https://android.clients.google.com/fdfe/toc",
        None,
        None,
        id="fdfe-other-endpoint",
    ),
    pytest.param(
        "android.clients.google.com",
        "https://android.clients.google.com/fdfe/purchase",
        None,
        None,
        id="fdfe-purchase-no-body",
    ),
    pytest.param(
        "example.com", "https://example.com/us/app/tiktok/id835599320", None, None, id="not-a-store-host"
    ),
]


@pytest.mark.parametrize(("host", "url", "body", "want"), STORE_URL_CASES)
def test_recognize_store_url(host: str, url: str, body: bytes | None, want: tuple[str, str] | None) -> None:
    ref = recognize_store_url(host, url, body)
    assert (None if ref is None else (ref.store, ref.app_id)) == want


SMALL_LABEL = st.sampled_from(["a", "b", "cn", "com", "x-1", "tiktok"])
SMALL_NAME = st.lists(SMALL_LABEL, min_size=1, max_size=4).map(".".join)


def _reference(name: str, suffix: set[str], exact: set[str]) -> tuple[str, bool] | None:
    """Most specific match by brute force: (key, exact?)."""
    if name in exact:
        return name, True
    labels = name.split(".")
    for i in range(len(labels)):
        key = ".".join(labels[i:])
        if key in suffix:
            return key, False
    return None


@settings(max_examples=400)
@given(st.sets(SMALL_NAME, max_size=8), st.sets(SMALL_NAME, max_size=4), SMALL_NAME)
def test_name_index_agrees_with_brute_force(suffix: set[str], exact: set[str], query: str) -> None:
    """Including indexes with bare top-level keys ('cn'), where the lookup may
    not skip the last label."""
    b = NameIndexBuilder()
    for name in suffix:
        b.add(name, Rule(RuleKind.DOMAIN, Tier.TRAFFIC, "app"), exact=False)
    for name in exact:
        b.add(name, Rule(RuleKind.HOST, Tier.TRAFFIC, "app"), exact=True)
    found = b.build().lookup(query)
    want = _reference(query, suffix, exact)
    assert (None if found is None else (found[0], found[1] % 2 == 1)) == want


def test_list_file_line_endings_and_numbers(tmp_path: Path) -> None:
    """CRLF lines load; a bad line is numbered as an editor counts (\\n only)."""
    base = tmp_path
    (base / "crlf.txt").write_bytes(b"one.example\r\ntwo.example\r\nthree\xc2\x85.example\r\nbad line\r\n")
    (base / "p.yaml").write_text("version: 1\napps:\n" + MINIMAL_APP + "    lists: [crlf.txt]\n")
    with pytest.raises(PolicyError) as info:
        load_policy(base / "p.yaml")
    assert [(i.line, i.message) for i in info.value.issues] == [
        (3, "'three\\x85.example' is not a domain name"),
        (4, "'bad line' is not a domain name"),
    ]
    (base / "crlf.txt").write_bytes(b"one.example\r\ntwo.example\r\n")
    view = load_policy(base / "p.yaml").view()
    assert view.decide_name("x.two.example").blocked


GLOB_LABEL = st.sampled_from(["*", "a*", "*b", "a", "b", "a*b", "cdn-*"])
GLOB = st.tuples(st.lists(GLOB_LABEL, min_size=1, max_size=3), st.sampled_from(["com", "net"])).map(
    lambda t: ".".join([*t[0], t[1]])
)
QUERY = st.tuples(
    st.lists(st.sampled_from(["a", "b", "ab", "axb", "cdn-1", "cdn-", "x"]), min_size=1, max_size=4),
    st.sampled_from(["com", "net"]),
).map(lambda t: ".".join([*t[0], t[1]]))


@settings(max_examples=300)
@given(st.lists(GLOB, min_size=1, max_size=5, unique=True), QUERY)
def test_glob_matcher_agrees_with_each_pattern(patterns: list[str], name: str) -> None:
    import re

    rules = {p: Rule(RuleKind.SNI, Tier.TRAFFIC, "app", pattern=p) for p in patterns}
    got = GlobMatcher(list(rules.items())).lookup(name)
    want = [rules[p] for p in patterns if re.fullmatch(glob_to_regex(p), name)]
    if not want:
        assert got is None
    else:
        assert got is not None and got[1] == tuple(want) and got[0] == 2 * name.count(".") + 2
