"""Pipeline stages: one module each, one public run() (export has export_module)."""
