"""Message authentication: SPF, DKIM, DMARC, iprev, ARC and Authentication-Results.

One module per standard; the evaluation cores are pure (DNS comes in through a resolver
passed as an argument, so the DNSSEC status of every lookup is known).
"""
