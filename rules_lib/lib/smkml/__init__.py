"""Helpers shared by the rule modules in rules_lib/ (vendored into generated projects as workflow/lib/smkml)."""
