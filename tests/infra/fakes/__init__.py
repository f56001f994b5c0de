"""Fakes for the provider VM boot tests: GCE metadata server, Secret Manager, command stubs."""
