"""Text attacks: word substitutions, character edits, white-box token flips."""
