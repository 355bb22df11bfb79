"""Reading the input: which reader, its pixels and valid mask, identity, tissue/foreground."""
