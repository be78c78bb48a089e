"""The journal: one interface (`base`), two backends (`sqlite`, the embedded default, and
`postgres`, shared by many hosts) and one for tests (`memory`), plus the outage budget and the
quarantine of poison records. `open.open_store` opens the one the `store` setting names."""
