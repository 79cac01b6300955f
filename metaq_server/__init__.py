"""metaq_server — the trio broker of metaq-trio: connections, command dispatch, configuration,
replication, transactions and statistics, on top of the metaq_core storage engine."""
