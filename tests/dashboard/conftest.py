"""Fixtures for the store and dashboard tests: the DNS tests' real resolver and authority, reused."""

from tests.dns.conftest import authority, resolver, write_policy  # noqa: F401  (fixtures)
