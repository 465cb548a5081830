"""SMTP TLS Reporting (TLSRPT), RFC 8460: per-attempt results, daily reports, the TXT record."""
