"""The test suite as a package: helpers are imported as tests.serving, tests.models, tests.server.conftest, ..."""
