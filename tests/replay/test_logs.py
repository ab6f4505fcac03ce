"""Zeek (TSV and JSON), Suricata EVE and mitmproxy flow files → verdicts."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from mitmproxy import io as mio
from mitmproxy.test import tflow, tutils

from policies import Action, PolicyView

from .conftest import replay_all

T = "\t"
ZEEK_HEADER = """#separator \\x09
#set_separator\t,
#empty_field\t(empty)
#unset_field\t-
#path\t{path}
#open\t2020-11-13-10-00-00
#fields\t{fields}
#types\t{types}
"""
DNS_FIELDS = (
    "ts uid id.orig_h id.orig_p id.resp_h id.resp_p proto trans_id rtt query qclass qclass_name qtype "
    "qtype_name rcode rcode_name AA TC RD RA Z answers TTLs rejected"
).split()
SSL_FIELDS = (
    "ts uid id.orig_h id.orig_p id.resp_h id.resp_p version cipher curve server_name resumed "
    "last_alert next_protocol established"
).split()
HTTP_FIELDS = (
    "ts uid id.orig_h id.orig_p id.resp_h id.resp_p trans_depth method host uri referrer version "
    "user_agent request_body_len response_body_len status_code"
).split()


def zeek_tsv(path: str, fields: list[str], rows: list[list[str]]) -> str:
    head = ZEEK_HEADER.format(path=path, fields=T.join(fields), types=T.join("string" for _ in fields))
    return head + "".join(T.join(r) + "\n" for r in rows) + "#close\t2020-11-13-11-00-00\n"


ZEEK_DNS = zeek_tsv(
    "dns",
    DNS_FIELDS,
    [
        [
            "1605261600.123456",
            "C1",
            "10.0.0.5",
            "53211",
            "10.0.0.53",
            "53",
            "udp",
            "7",
            "0.01",
            "www.tiktok.com",
            "1",
            "C_INTERNET",
            "1",
            "A",
            "0",
            "NOERROR",
            "F",
            "F",
            "T",
            "T",
            "0",
            "www.tiktok.com.edge.example,edge.tiktokcdn.example,192.0.2.1",
            "60.0,60.0,60.0",
            "F",
        ],
        [
            "1605261601.5",
            "C2",
            "10.9.0.7",
            "53212",
            "10.0.0.53",
            "53",
            "udp",
            "8",
            "-",
            "www.wechat.com",
            "1",
            "C_INTERNET",
            "28",
            "AAAA",
            "0",
            "NOERROR",
            "F",
            "F",
            "T",
            "T",
            "0",
            "-",
            "-",
            "F",
        ],
    ],
)
ZEEK_SSL = zeek_tsv(
    "ssl",
    SSL_FIELDS,
    [
        [
            "1605261602.0",
            "C3",
            "10.0.0.5",
            "40000",
            "198.51.100.7",
            "443",
            "TLSv13",
            "TLS_AES_128_GCM_SHA256",
            "x25519",
            "v16.tiktokv.com",
            "F",
            "-",
            "h2",
            "T",
        ],
        [
            "1605261603.0",
            "C4",
            "10.0.0.5",
            "40001",
            "203.0.113.9",
            "443",
            "TLSv13",
            "-",
            "-",
            "-",
            "F",
            "-",
            "-",
            "T",
        ],
    ],
)
ZEEK_HTTP = zeek_tsv(
    "http",
    HTTP_FIELDS,
    [
        [
            "1605261604.0",
            "C5",
            "10.0.0.5",
            "40002",
            "198.51.100.8",
            "80",
            "1",
            "GET",
            "cdn.shared.example",
            "/tiktok/app.apk",
            "-",
            "1.1",
            "curl/8",
            "0",
            "100",
            "200",
        ],
    ],
)
ZEEK_JSON = (
    "\n".join(
        json.dumps(r)
        for r in [
            {
                "ts": 1605261605.0,
                "uid": "C6",
                "id.orig_h": "10.0.0.5",
                "id.orig_p": 5000,
                "id.resp_h": "10.0.0.53",
                "id.resp_p": 53,
                "proto": "udp",
                "trans_id": 9,
                "query": "api.wechat.com",
                "qtype_name": "A",
                "answers": ["api.wechat.com.cdn.example", "192.0.2.3"],
            },
            {
                "ts": "2020-11-13T10:00:06.000000Z",
                "uid": "C7",
                "id.orig_h": "10.0.0.5",
                "id.orig_p": 5001,
                "id.resp_h": "198.51.100.7",
                "id.resp_p": 443,
                "version": "TLSv13",
                "server_name": "www.tiktok.com",
            },
            {
                "ts": 1605261607.0,
                "uid": "C8",
                "id.orig_h": "10.0.0.5",
                "id.orig_p": 5002,
                "id.resp_h": "198.51.100.9",
                "id.resp_p": 80,
                "method": "GET",
                "host": "play.google.com",
                "uri": "/store/apps/details?id=com.zhiliaoapp.musically",
            },
        ]
    )
    + "\n"
)


def eve(
    event_type: str,
    body: dict,
    src: tuple[str, int] = ("10.0.0.5", 5353),
    dst: tuple[str, int] = ("10.0.0.53", 53),
) -> str:
    return json.dumps(
        {
            "timestamp": "2020-11-13T10:00:00.123456+0000",
            "flow_id": 1,
            "event_type": event_type,
            "src_ip": src[0],
            "src_port": src[1],
            "dest_ip": dst[0],
            "dest_port": dst[1],
            "proto": "UDP",
            event_type: body,
        }
    )


SURICATA = (
    "\n".join(
        [
            eve("dns", {"version": 2, "type": "query", "id": 7, "rrname": "www.tiktok.com", "rrtype": "A"}),
            eve(
                "dns",
                {
                    "version": 2,
                    "type": "answer",
                    "id": 7,
                    "rrname": "www.tiktok.com",
                    "rrtype": "A",
                    "answers": [
                        {"rrname": "www.tiktok.com", "rrtype": "CNAME", "rdata": "tt.edge.example"},
                        {"rrname": "tt.edge.example", "rrtype": "A", "rdata": "192.0.2.4"},
                    ],
                },
                src=("10.0.0.53", 53),
                dst=("10.0.0.5", 5353),
            ),
            eve(
                "dns",
                {
                    "version": 3,
                    "type": "request",
                    "id": 8,
                    "queries": [{"rrname": "web.wechat.com", "rrtype": "A"}],
                },
            ),
            eve(
                "dns",
                {
                    "version": 3,
                    "type": "response",
                    "id": 8,
                    "queries": [{"rrname": "web.wechat.com", "rrtype": "A"}],
                    "answers": [{"rrname": "web.wechat.com", "rrtype": "CNAME", "rdata": "wx.edge.example"}],
                },
                src=("10.0.0.53", 53),
                dst=("10.0.0.5", 5353),
            ),
            eve("tls", {"sni": "v16.tiktokv.com", "version": "TLS 1.3"}, dst=("198.51.100.7", 443)),
            eve(
                "http",
                {"hostname": "dl.tiktok.example", "url": "/latest.apk", "http_method": "GET"},
                dst=("198.51.100.8", 80),
            ),
            eve("flow", {"pkts_toserver": 3}),
            "this line is not JSON",
        ]
    )
    + "\n"
)


def _mitm(path: Path) -> None:
    https = tflow.tflow(
        req=tutils.treq(
            host="www.tiktok.com", port=443, scheme=b"https", path=b"/api/feed", authority=b"www.tiktok.com"
        )
    )
    https.client_conn.sni = "www.tiktok.com"
    plain = tflow.tflow(
        req=tutils.treq(
            host="cdn.shared.example",
            port=80,
            path=b"/tiktok/app.apk",
            headers=((b"host", b"cdn.shared.example"),),
        )
    )
    plain.client_conn.sni = None
    other = tflow.tflow(req=tutils.treq(host="example.org", port=80, path=b"/"))
    other.client_conn.sni = None
    dnsflow = tflow.tdnsflow()
    dnsflow.client_conn.sni = None
    with path.open("wb") as f:
        w = mio.FlowWriter(f)
        for fl in (https, plain, other, dnsflow):
            w.add(fl)


CASES = [
    (
        "zeek-dns-tsv",
        "dns.log",
        ZEEK_DNS,
        [
            ("dns", "www.tiktok.com", "zeek-dns", Action.LOG),
            ("dns", "www.tiktok.com.edge.example", "cname", Action.ALLOW),
            ("dns", "edge.tiktokcdn.example", "cname", Action.ALLOW),
            ("dns", "www.wechat.com", "zeek-dns", Action.LOG),
        ],
    ),  # 10.9.0.0/16 is exempt: block → log
    (
        "zeek-ssl-tsv",
        "ssl.log",
        ZEEK_SSL,
        [("sni", "v16.tiktokv.com", "zeek-ssl", Action.LOG), ("ip", "203.0.113.9", "zeek-ssl", Action.LOG)],
    ),
    (
        "zeek-http-tsv",
        "http.log",
        ZEEK_HTTP,
        [("http", "http://cdn.shared.example/tiktok/app.apk", "zeek-http", Action.BLOCK)],
    ),
    (
        "zeek-json",
        "zeek.json",
        ZEEK_JSON,
        [
            ("dns", "api.wechat.com", "zeek-dns", Action.BLOCK),
            ("dns", "api.wechat.com.cdn.example", "cname", Action.ALLOW),
            ("sni", "www.tiktok.com", "zeek-ssl", Action.LOG),
            (
                "http",
                "http://play.google.com/store/apps/details?id=com.zhiliaoapp.musically",
                "zeek-http",
                Action.BLOCK,
            ),
        ],
    ),
    (
        "suricata-eve",
        "eve.json",
        SURICATA,
        [
            ("dns", "www.tiktok.com", "suricata-dns", Action.LOG),
            ("dns", "tt.edge.example", "cname", Action.ALLOW),
            ("dns", "web.wechat.com", "suricata-dns", Action.BLOCK),
            ("dns", "wx.edge.example", "cname", Action.ALLOW),
            ("sni", "v16.tiktokv.com", "suricata-tls", Action.LOG),
            ("http", "http://dl.tiktok.example/latest.apk", "suricata-http", Action.BLOCK),
        ],
    ),
]


@pytest.mark.parametrize("name,text,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_log(
    name: str,
    text: str,
    expected: list[tuple[str, str, str, Action]],
    compress: bool,
    view: PolicyView,
    tmp_path: Path,
) -> None:
    path = tmp_path / (name + (".gz" if compress else ""))
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    verdicts, rep = replay_all(view, path)
    got = [(v.sighting.kind.value, v.sighting.value, v.sighting.via, v.decision.action) for v in verdicts]
    assert got == expected
    if name == "eve.json":
        assert [str(d) for d in rep.damage] == [f"{path} at line 8: 1 line(s) not understood (first: line 8)"]
    else:
        assert rep.damage == []


def test_zeek_endpoints_and_time(view: PolicyView, tmp_path: Path) -> None:
    path = tmp_path / "dns.log"
    path.write_text(ZEEK_DNS)
    first = replay_all(view, path)[0][0].sighting
    assert (first.time, first.client, first.client_port, first.server, first.server_port, first.qtype) == (
        1605261600.123456,
        "10.0.0.5",
        53211,
        "10.0.0.53",
        53,
        "A",
    )


def test_mitm_flow_file(view: PolicyView, tmp_path: Path) -> None:
    path = tmp_path / "flows.mitm"
    _mitm(path)
    verdicts, rep = replay_all(view, path)
    got = [(v.sighting.kind.value, v.sighting.value, v.sighting.via, v.decision.action) for v in verdicts]
    assert got == [
        ("sni", "www.tiktok.com", "mitm-tls", Action.LOG),
        ("http", "https://www.tiktok.com/api/feed", "mitm-http", Action.LOG),
        ("http", "http://cdn.shared.example/tiktok/app.apk", "mitm-http", Action.BLOCK),
        ("http", "http://example.org/", "mitm-http", Action.ALLOW),
        ("dns", "dns.google", "mitm-dns", Action.BLOCK),  # builtin:doh, as the proxy and DNS judge it
    ]
    assert rep.damage == [] and rep.inputs == [(str(path), "mitmproxy flows")]


def test_mitm_flow_file_cut_short(view: PolicyView, tmp_path: Path) -> None:
    path = tmp_path / "flows.mitm"
    _mitm(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    verdicts, rep = replay_all(view, path)
    assert [v.sighting.value for v in verdicts][:3] == [
        "www.tiktok.com",
        "https://www.tiktok.com/api/feed",
        "http://cdn.shared.example/tiktok/app.apk",
    ]
    assert len(rep.damage) == 1 and "flows.mitm at flow" in str(rep.damage[0]) and rep.damage[0].stopped


BAD_LOGS = [
    (
        "bad-separator",
        "#separator \\x\n#fields\tts\tquery\n1\tx.example\n",
        "line 1: 2 line(s) not understood",
    ),
    ("deep-json", "{" * 100_000 + "\n", "line 1: 1 line(s) not understood"),
    ("zeek-wrong-column-count", ZEEK_DNS.replace("\tF\n", "\n", 1), "line 9: 1 line(s) not understood"),
    (
        "eve-no-timestamp-and-not-an-object",
        '{"event_type": "dns"}\n[1, 2]\n',
        "line 1: 2 line(s) not understood",
    ),
]


@pytest.mark.parametrize("text,warning", [x[1:] for x in BAD_LOGS], ids=[x[0] for x in BAD_LOGS])
def test_bad_log_lines_warn_and_continue(text: str, warning: str, view: PolicyView, tmp_path: Path) -> None:
    path = tmp_path / "bad.log"
    path.write_text(text)
    _, rep = replay_all(view, path)
    assert len(rep.damage) == 1 and warning in str(rep.damage[0]) and not rep.damage[0].stopped
