"""wws-supervisor: serve a folder of Wasm workers through a supervised pool of sandboxed runners."""

__version__ = "0.1.0"
