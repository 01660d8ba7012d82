"""Rows: one mapping from a MySQL row to its Redis value (schema, rowcodec, expected) and the keyset reader."""
