"""Analysis: gen-PPL and diversity metrics, the judge, step importance, schedule search, calibration, paired statistics and plots."""
