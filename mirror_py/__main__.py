from mirror_py.cli import main

# One name whichever way it is started: usage lines say mirror-py, and shell completion (which finds its
# variable by the program's name) works for `python -m mirror_py` too.
main(prog_name="mirror-py")
