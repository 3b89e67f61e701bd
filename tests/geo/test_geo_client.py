"""geo.client: the client address from the socket peer and trusted proxies' headers."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geo.client import (
    FORWARDED,
    client_address,
    forwarded_for,
    parse_address,
    parse_networks,
)

TRUSTED = parse_networks(["10.0.0.0/8", "2001:db8:ffff::/48", "127.0.0.1"])
ip = ipaddress.ip_address


def addr(peer: str, headers: object = (), header: str = "x-forwarded-for") -> str:
    return str(client_address(peer, headers, TRUSTED, header=header))


def test_untrusted_peer_is_the_client_and_its_headers_change_nothing() -> None:
    spoofed = [("X-Forwarded-For", "81.2.69.160"), ("Forwarded", "for=81.2.69.160")]
    assert addr("89.160.20.112", spoofed) == "89.160.20.112"
    assert addr("89.160.20.112", spoofed, FORWARDED) == "89.160.20.112"
    assert addr("89.160.20.112") == "89.160.20.112"


def test_walks_from_the_right_past_trusted_hops() -> None:
    # client -> proxy 10.1.1.1 -> proxy 10.2.2.2 -> us; a client-written prefix is ignored
    xff = [("X-Forwarded-For", "1.1.1.1, 81.2.69.160, 10.1.1.1")]
    assert addr("10.2.2.2", xff) == "81.2.69.160"
    assert addr("127.0.0.1", [("X-Forwarded-For", "216.160.83.56")]) == "216.160.83.56"


def test_several_header_lines_are_one_list() -> None:
    xff = [("X-Forwarded-For", "5.5.5.5"), ("x-forwarded-for", "81.2.69.160, 10.0.0.9")]
    assert addr("10.0.0.1", xff) == "81.2.69.160"


def test_every_hop_trusted_gives_the_leftmost() -> None:
    assert addr("10.0.0.1", [("X-Forwarded-For", "10.0.0.7, 10.0.0.8")]) == "10.0.0.7"


def test_trusted_peer_without_header_is_the_client() -> None:
    assert addr("10.0.0.1") == "10.0.0.1"


@pytest.mark.parametrize("bad", ["", "garbage", "81.2.69.999", "unknown", "_hidden", "1.2.3.4:port",
                                 "[2001:db8::1", "::ffff:zz", "a" * 200, "81.2.69.160, ",
                                 "\x00\x01", "💥"])
def test_malformed_hop_stops_at_the_last_readable_address(bad: str) -> None:
    # the nearest hop is unreadable: the trusted peer itself stands (no country: fail closed)
    assert addr("10.0.0.1", [("X-Forwarded-For", bad)]) == "10.0.0.1"


def test_malformed_hop_further_left_is_never_reached_past_an_untrusted_one() -> None:
    assert addr("10.0.0.1", [("X-Forwarded-For", "garbage, 81.2.69.160")]) == "81.2.69.160"
    # unreadable between two trusted hops: the nearest readable trusted hop stands
    assert addr("10.0.0.1", [("X-Forwarded-For", "81.2.69.160, nonsense, 10.0.0.5")]) == "10.0.0.5"


def test_ports_brackets_and_zone_ids() -> None:
    assert addr("10.0.0.1", [("X-Forwarded-For", "81.2.69.160:51234")]) == "81.2.69.160"
    assert addr("10.0.0.1", [("X-Forwarded-For", "[2001:218::1]:443")]) == "2001:218::1"
    assert addr("10.0.0.1", [("X-Forwarded-For", "2001:218::1")]) == "2001:218::1"
    assert addr("10.0.0.1", [("X-Forwarded-For", "fe80::1%eth0")]) == "fe80::1"


def test_ipv4_mapped_addresses_become_ipv4() -> None:
    assert addr("::ffff:89.160.20.112") == "89.160.20.112"
    assert addr("10.0.0.1", [("X-Forwarded-For", "::ffff:81.2.69.160")]) == "81.2.69.160"
    # a dual-stack socket reports a trusted IPv4 proxy as mapped: still trusted
    assert addr("::ffff:10.0.0.1", [("X-Forwarded-For", "81.2.69.160")]) == "81.2.69.160"
    assert parse_networks(["::ffff:10.0.0.0/104"]) == (ipaddress.IPv4Network("10.0.0.0/8"),)


def test_ipv6_trusted_proxies() -> None:
    assert addr("2001:db8:ffff::7", [("X-Forwarded-For", "2001:218::1")]) == "2001:218::1"
    assert addr("2001:db8:fffe::7", [("X-Forwarded-For", "2001:218::1")]) == "2001:db8:fffe::7"


def test_forwarded_rfc7239() -> None:
    fwd = [("Forwarded", 'for=81.2.69.160;proto=https, for="[2001:218::1]:4711";by=10.0.0.1, for=10.0.0.3')]
    assert addr("10.0.0.1", fwd, FORWARDED) == "2001:218::1"
    assert addr("10.0.0.1", [("Forwarded", 'For="81.2.69.160:80"')], FORWARDED) == "81.2.69.160"
    # obfuscated identifiers and unknown stop the walk at the last readable address
    assert addr("10.0.0.1", [("Forwarded", "for=_hidden")], FORWARDED) == "10.0.0.1"
    assert addr("10.0.0.1", [("Forwarded", "for=unknown, for=10.0.0.2")], FORWARDED) == "10.0.0.2"
    # an element without for=, or with a repeated parameter, is unreadable
    assert addr("10.0.0.1", [("Forwarded", "proto=https")], FORWARDED) == "10.0.0.1"
    assert addr("10.0.0.1", [("Forwarded", "for=1.2.3.4;for=81.2.69.160")], FORWARDED) == "10.0.0.1"
    assert addr("10.0.0.1", [("Forwarded", 'for="unterminated')], FORWARDED) == "10.0.0.1"
    # the header not configured is never read
    assert addr("10.0.0.1", [("Forwarded", "for=81.2.69.160")]) == "10.0.0.1"


def test_forwarded_parser_keeps_quoted_commas_and_semicolons() -> None:
    assert forwarded_for('for="a,b";by=x, for=1.2.3.4') == ["a,b", "1.2.3.4"]
    assert forwarded_for('for="x\\"y"') == ['x"y']


def test_parse_address_forms() -> None:
    assert parse_address(" 81.2.69.160 ") == ip("81.2.69.160")
    assert parse_address("[::1]") == ip("::1")
    assert parse_address("[::1]x") is None
    assert parse_address("example.com") is None


def test_bad_trusted_network_names_it() -> None:
    with pytest.raises(ValueError, match="'10.0.0.0/33'"):
        parse_networks(["10.0.0.0/8", "10.0.0.0/33"])


def test_request_form_and_unix_socket_peer() -> None:
    class Request:
        remote = "10.0.0.1"
        headers = (("X-Forwarded-For", "81.2.69.160"),)

    assert str(client_address(Request(), ["10.0.0.0/8"])) == "81.2.69.160"
    Request.remote = None  # type: ignore[assignment]
    assert client_address(Request(), ["10.0.0.0/8"]) is None


@given(st.text(max_size=300))
def test_any_header_gives_an_address_and_never_raises(text: str) -> None:
    result = client_address("10.0.0.1", [("X-Forwarded-For", text), ("Forwarded", text)], TRUSTED)
    assert result is not None
    result = client_address("10.0.0.1", [("Forwarded", text)], TRUSTED, header=FORWARDED)
    assert result is not None
    assert client_address("89.160.20.112", [("X-Forwarded-For", text)], TRUSTED) == ip("89.160.20.112")


@given(st.one_of(st.text(alphabet="0123456789.²٣ x", max_size=20).filter(lambda t: ":" not in t),
                 st.tuples(*[st.integers(0, 300)] * 4).map(lambda t: ".".join(map(str, t)))))
def test_fast_ipv4_parser_agrees_with_ipaddress(text: str) -> None:
    try:
        expected: object = ipaddress.IPv4Address(text.strip())  # proxies' padding is forgiven
    except ValueError:
        expected = None
    assert parse_address(text) == expected
