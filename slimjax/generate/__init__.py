"""Instance generators (in progress)."""
