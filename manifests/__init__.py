"""The contract between builder, training and evaluation: manifest schema, verification, committed files."""
