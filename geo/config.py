"""The ``[geo]`` section of an edge's config: where the MaxMind files are,
which proxies may name the client, and the licensing policy's defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from geo.client import HEADERS, X_FORWARDED_FOR, Networks, parse_networks
from geo.licence import FIELDS, ISO_CODES
from legato.config import setting

BUNDLED = "bundled"
"""``database = "bundled"``: the GeoLite2 City file of the maxminddb-geolite2 package (2018 data: demos only)."""


@dataclass(frozen=True)
class GeoConfig:
    database: str = setting("", "MaxMind Country or City .mmdb file (GeoIP2/GeoLite2); 'bundled' for the "
                                "2018 GeoLite2 City of the maxminddb-geolite2 package (demos only); "
                                "empty: no licence checks")
    anonymous_database: str = setting("", "optional GeoIP2 Anonymous-IP .mmdb (for licences that refuse "
                                          "anonymous proxies)")
    trusted_proxies: tuple[str, ...] = setting((), "CIDR networks of proxies whose forwarding header names "
                                                   "the client (e.g. your load balancers)")
    proxy_header: str = setting(X_FORWARDED_FOR, "header trusted proxies append to: x-forwarded-for or "
                                                 "forwarded (RFC 7239)")
    unknown: str = setting("deny", "addresses the database does not know: deny (fail closed) or allow")
    missing: str = setting("deny", "tracks without a licence record: deny (production) or allow")
    country_field: str = setting("country", "which country decides when a licence does not say: country, "
                                            "registered_country or represented_country")
    loopback_country: str = setting("", "country given to loopback clients (127.0.0.1, ::1), e.g. for a "
                                        "local demo; empty: none (unknown)")
    license_max_age: float = setting(1.0, "seconds a worker reuses a licence record it has read before "
                                          "reading it through the cache again (the cache honours origin's "
                                          "Cache-Control; a purge reaches the gate within this)")
    poll_interval: float = setting(5.0, "seconds between checks of the database files for a replacement")

    def __post_init__(self) -> None:
        self.networks()  # names a bad CIDR at load time
        if self.proxy_header.lower() not in HEADERS:
            raise ValueError(f"proxy_header {self.proxy_header!r} must be one of {', '.join(HEADERS)}")
        for name in ("unknown", "missing"):
            if getattr(self, name) not in ("deny", "allow"):
                raise ValueError(f"{name} {getattr(self, name)!r} must be 'deny' or 'allow'")
        if self.country_field not in FIELDS:
            raise ValueError(f"country_field {self.country_field!r} must be one of {', '.join(FIELDS)}")
        if self.loopback_country and self.loopback_country not in ISO_CODES:
            raise ValueError(f"loopback_country {self.loopback_country!r} is not an ISO 3166-1 alpha-2 code")
        if self.license_max_age < 0 or self.poll_interval <= 0:
            raise ValueError("license_max_age must be >= 0 and poll_interval > 0")

    @property
    def enabled(self) -> bool:
        return bool(self.database)

    def networks(self) -> Networks:
        try:
            return parse_networks(self.trusted_proxies)
        except ValueError as exc:
            raise ValueError(f"trusted_proxies {exc}") from None

    def database_path(self) -> Path:
        """The country database file (``bundled`` resolved); ValueError when it cannot be."""
        if self.database == BUNDLED:
            from geo.country import bundled_geolite2

            path = bundled_geolite2()
            if path is None:
                raise ValueError("database 'bundled' needs the maxminddb-geolite2 package (pip install "
                                 "maxminddb-geolite2)")
            return path
        return Path(self.database)
