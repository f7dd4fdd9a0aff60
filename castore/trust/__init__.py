"""Who is trusted: user configuration, signing keys, trust policy and signatures."""
