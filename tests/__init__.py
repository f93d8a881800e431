"""The test suite: unit, integration and end-to-end tests, and the fixtures they share."""
