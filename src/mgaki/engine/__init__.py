"""Pure clinical rules: no I/O, inputs already in canonical units."""
