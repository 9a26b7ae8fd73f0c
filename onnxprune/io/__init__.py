"""Reading and writing: models (incl. over 2 GB), calibration arrays, atomic output files."""
