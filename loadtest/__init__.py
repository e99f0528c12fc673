"""Load tests that show the autoscaler at work, and a report a person can look at."""
