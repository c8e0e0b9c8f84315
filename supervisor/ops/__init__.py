"""The daemon: sd_notify, metrics, the admin listener, the systemd unit, the options file, logs,
--watch and the cache subcommands."""
