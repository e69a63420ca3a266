// placeholder: see the following commits
