"""Sample data the project makes itself (numpy/scipy only): the synthetic abdominal CT phantom.
Imports nothing else of the project."""
