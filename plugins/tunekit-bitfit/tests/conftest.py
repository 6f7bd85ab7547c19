pytest_plugins = ["tunekit.testing.fixtures"]
