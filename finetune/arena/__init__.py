"""Blind pairwise arena: people rate compare outputs side by side in a browser; Bradley-Terry ratings."""
