"""Speech data and files: audio decoding and checks, transcript types, output formats."""
