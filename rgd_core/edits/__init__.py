"""What an unlearning run changes in a model: the scope vocabulary, the weight edits, and their files."""
