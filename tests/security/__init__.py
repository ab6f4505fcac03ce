"""Attacks kept in the suite: each module replays one red-team finding as a table of cases."""
