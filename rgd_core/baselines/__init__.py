"""Methods rgd is compared with (ESD)."""
