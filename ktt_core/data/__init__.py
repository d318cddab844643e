"""Getting data in: importers (files, SQL), splitting, tokenized batches."""
