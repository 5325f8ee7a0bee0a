"""Outbound campaigns: who, when, what, how, where and why (see the README)."""
