"""The command-line layer: parse, load the recipe, call the library, render the result."""
