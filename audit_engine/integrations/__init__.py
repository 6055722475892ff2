"""Optional bridges to the frameworks apps are built with; each is imported only when used."""
