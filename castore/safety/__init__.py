"""The restricted loader: unpickling store content without running its code."""
