"""The `azure` provider: Azure's own services behind the provider protocols."""
