"""Test package: module names stay unique across folders (tests.unit.x vs tests.integration.x)."""
