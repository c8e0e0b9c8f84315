"""What is served: project discovery, routes, worker and server configuration files, WAGI and
serverless-wasm configs, script runtimes, tenants."""
