"""Activities: what "busy" means, declared; the SQL generated from them; their checks."""
