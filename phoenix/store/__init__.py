"""The journal: one interface (`base`), two backends (`sqlite`, the embedded default, and
`postgres`, shared by many hosts), plus the outage budget and the quarantine of poison records."""
