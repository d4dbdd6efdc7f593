"""The book's own machinery: the lab tree, the site hooks and the contract checks."""
