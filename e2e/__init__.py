"""`make e2e`: the real-cloud proof, driven through Pulumi's Automation API. Never part of `make test`."""
