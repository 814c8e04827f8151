from mirror_py.cli import main

main()
