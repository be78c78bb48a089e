from phoenix.cli import main

main()
