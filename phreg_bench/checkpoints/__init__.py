"""Checkpoints that come from elsewhere: the authors' released PH-Reg students (converted into this project's
adapters), adapters shared on the Hugging Face hub (fetch and push), and hub file specs shared by methods."""
