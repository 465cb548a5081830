"""Account directories: who receives mail for an address, who may send as it, and the
stored SASL secrets of a login (local accounts in the store; LDAP later)."""
